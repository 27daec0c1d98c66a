"""Chemistry: formulas and masses, isotopologues from every element, adducts, and the library's ion
table.
"""

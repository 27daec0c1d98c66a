"""The context pass: evidence from co-eluting peaks of the same molecule (isotopologues, other
adducts), its run-level model fitted from sums over blocks, and its re-weighing of each
partition's candidates.
"""

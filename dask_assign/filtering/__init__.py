"""Candidate filtering: the ion table as the kernels need it (sorted by m/z, with mass bins and
lookups) and the deterministic peak x ion range join.
"""

"""Probabilistic scoring: per-pair features, the masked scorer over each peak's candidates plus a
null slot, the first pass and the refinement of one partition, and the tables they give.
"""

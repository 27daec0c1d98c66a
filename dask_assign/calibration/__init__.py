"""Self-calibration: what the run's peaks say before any fit, the mass search, the RT drift search,
EM over the mass and RT error models, and where unlisted isomers elute.
"""

"""Pure detectors: arrays and tables in, scores out. No Beam, no file layout, no CLI.

Every detector carries a versioned name (``NAME = "..._v1"``) stored next to its scores, so a
threshold change in ``audit`` never recomputes anything and every score is traceable.
"""

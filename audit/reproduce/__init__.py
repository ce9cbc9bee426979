"""What ``laion-audit reproduce`` does, below the stage's options (``audit/stages/reproduce.py``).

- :mod:`audit.reproduce.generate`: the prompts, the generator (loaded once here for the triage,
  and per Beam worker as a picklable builder), Wen et al.'s triage and the Beam fan-out of
  seeded generations (``pipelines.reproduce``).
- :mod:`audit.reproduce.score`: every generation scored against the training images
  (``pipelines.training_set``), the copy thresholds calibrated without labels, the tiled-l2
  verbatim check, object presence with the objects finding's own scorer, and the tables and
  metadata the stage writes. The arithmetic is ``detectors.memorization``'s.
"""

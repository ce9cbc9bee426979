"""Training scripts for the two tiny models the project ships (trained on the SynthLAION testbed).

- ``python -m audit.training.train_tiny_clip``: the ``tiny-synth`` open_clip model.
- ``python -m audit.training.train_tiny_sd``: the tiny Stable-Diffusion-architecture pipeline.

Both are seeded and write their measured quality numbers and wall times next to the weights.
"""

"""Training scripts for the two tiny models the project ships (trained on the SynthLAION testbed).

- ``python -m audit.training.train_tiny_clip``: the ``tiny-synth`` open_clip model.
- ``python -m audit.training.train_tiny_sd``: the tiny Stable-Diffusion-architecture pipeline.

Both are seeded and write their measured quality numbers and wall times next to the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_checkpoint(path: str | Path) -> Any:
    """A resume checkpoint or cached chunk written by these scripts, loaded with
    ``torch.load(weights_only=True)``: tensors, optimizer and generator state and plain Python
    values (dicts, lists, tuples, numbers, strings) only. Anything else in the file (a pickled
    object, code to run) raises ``pickle.UnpicklingError`` instead of being executed."""
    import torch

    return torch.load(path, weights_only=True)

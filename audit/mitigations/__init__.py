"""Model-side mitigations and attacks on them, measured like replication.

- :mod:`audit.mitigations.esd`: Erased Stable Diffusion (Gandikota et al., ICCV 2023), fine-tunes
  the UNet so that a concept's noise prediction points away from it (``laion-audit erase``).
- :mod:`audit.mitigations.attack`: UnlearnDiffAtk (Zhang et al., ECCV 2024), adversarial prompt
  tokens that bring an erased concept back (``laion-audit attack``).
- Safe Latent Diffusion (Schramowski et al., CVPR 2023) is a generation-time option of
  ``laion-audit reproduce --safety sld:PRESET`` (``pipelines.safety``).
- :mod:`audit.mitigations.runs`: reproduce runs of mitigated models recorded side by side
  (``generations/runs/<label>/``), and the zero-shot accuracy of control prompts (what a fix
  costs); the report's "Mitigations" section compares them.
"""

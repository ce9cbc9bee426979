"""laion-audit: audit scraped image-text datasets (LAION-style) before training.

Stable Python API: ``audit.models.load_clip``, ``audit.models.load_generator``,
``audit.workspace.Workspace``.
"""

__version__ = "0.1.0"

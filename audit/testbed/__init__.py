"""SynthLAION: a LAION-like testbed with planted, known truth.

- :mod:`audit.testbed.draw`: procedural images (glyph concepts, colours, styles, backgrounds,
  famous van gogh works) and template captions.
- :mod:`audit.testbed.generate`: ``build_testbed(out_dir, n, seed, **rates)`` writes
  ``urls.parquet``, ``files/``, img2dataset ``shards/``, ``truth.parquet`` and ``testbed.json``;
  ``write_url_list`` / ``urls_for`` point the url list at a running server; ``load_truth``;
  ``write_served_images`` lays out any images the same way (``files/`` + ``urls.parquet``).
- :mod:`audit.testbed.server`: ``serve_testbed(dir)``, a loopback HTTP server for ``files/``.
- :mod:`audit.testbed.poison`: clean-label PGD poisons against a CLIP image tower.

Submodules are imported on demand (this package imports nothing heavy).
"""

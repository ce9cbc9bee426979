"""SynthLAION: a LAION-like testbed with planted, known truth (drawing, generator, server)."""

"""Apache Beam pipelines and I/O: ingest, embed, reproduce fan-out, filter/reshard, dedup."""

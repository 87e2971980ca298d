"""Checkpoint files: the safetensors reader and writer (files.py), the one output writer
(output.py), shard planning (shards.py), the conversions (convert.py) and the rank loop of a
multi-process job (job.py)."""

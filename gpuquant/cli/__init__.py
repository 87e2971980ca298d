"""The gpuquant command: argument parsing and one-line errors (main.py), the export commands
(export.py) and the demo (demo.py)."""

from .main import main

__all__ = ["main"]

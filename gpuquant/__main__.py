"""``python -m gpuquant ...`` runs the ``gpuquant`` command."""

import sys

from .cli import main

sys.exit(main())

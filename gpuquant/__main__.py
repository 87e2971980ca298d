"""``python -m gpuquant ...`` runs the ``gpuquant`` command."""

import sys

from .cli.main import main

sys.exit(main())

"""``python -m convlens ...`` runs the command line (also under ``torchrun``)."""

import sys

from convlens.cli import main

sys.exit(main())

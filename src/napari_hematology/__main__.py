"""``python -m napari_hematology`` runs the command line."""

import sys

from napari_hematology.cli import main

sys.exit(main())

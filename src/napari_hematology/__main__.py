"""``python -m napari_hematology`` runs the command line."""

import sys

from napari_hematology.cli import main

if __name__ == "__main__":  # worker processes (spawned) import this module again
    sys.exit(main())

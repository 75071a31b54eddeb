"""``python -m gradzip.sweep``: see gradzip.sweep.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

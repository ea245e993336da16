"""``python -m wsl`` is the same as the ``wsl`` command."""

import sys

from wsl.cli import main

if __name__ == "__main__":
    sys.exit(main())

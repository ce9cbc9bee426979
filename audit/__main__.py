"""``python -m audit`` is the same as the ``laion-audit`` console script."""

import sys

from audit.cli import main

if __name__ == "__main__":
    sys.exit(main())

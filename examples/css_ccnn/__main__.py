"""``python -m examples.css_ccnn <command>``: see :mod:`examples.css_ccnn.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

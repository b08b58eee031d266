"""`python -m imagebuild os|seed|operator-image` (see the package docstring)."""

from __future__ import annotations

import sys

from imagebuild.build import main

if __name__ == "__main__":
    sys.exit(main())

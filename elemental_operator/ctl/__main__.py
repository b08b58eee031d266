"""``python -m elemental_operator.ctl``: the same as the ``elementalctl`` console script."""

import sys

from elemental_operator.ctl import main

sys.exit(main())

"""``python -m lrkit.cli``: the ``lrkit`` command."""

import sys

from lrkit.cli import main

sys.exit(main())

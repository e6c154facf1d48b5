"""``python -m portable_mlp``: the ``portable-mlp`` command line."""

import sys

from .cli import main

sys.exit(main())

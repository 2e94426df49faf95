"""`python -m qtask` is the `qtask` command."""

import sys

from qtask.cli import main

sys.exit(main())

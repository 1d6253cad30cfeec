"""`python -m mcc` is the `mcc` command."""

import sys

from mcc.cli import main

sys.exit(main())

"""`python -m pvtkit` runs the command line (with the process settings of `cli.configure_process`)."""

import sys

from .cli import main

sys.exit(main())

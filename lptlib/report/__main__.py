"""`python -m lptlib.report`: print, check or rewrite the README's results block (see `lptlib.report.table`)."""

import sys

from lptlib.report.table import main

sys.exit(main())

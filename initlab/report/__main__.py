"""`python -m initlab.report` is `initlab-report`."""

import sys

from initlab.report.cli import main

sys.exit(main())

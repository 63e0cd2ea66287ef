"""`python -m defectmap` runs the command-line tool."""

import sys

from defectmap.cli import main

sys.exit(main())

"""`python -m imaged.cli` runs imagectl."""

import sys

from imaged.cli.main import main

sys.exit(main())

"""`python -m fer_platform.cli`: the `fer-platform` command (the tests start it so)."""

import sys

from fer_platform.cli import main

sys.exit(main())

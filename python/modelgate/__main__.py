"""``python -m modelgate`` runs the CLI."""

import sys

from modelgate.cli import main

sys.exit(main())

"""`python -m localspec ...` is the `localspec` command."""

import sys

from localspec.cli import main

sys.exit(main())

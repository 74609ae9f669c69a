"""A handler module whose import calls sys.exit()."""

import sys

sys.exit(3)

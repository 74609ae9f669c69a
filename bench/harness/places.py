"""Where things are: the repository, the bench directory, this Python and its supervisor.

The contenders run with the repository root on PYTHONPATH, so that the supervisor and the
standard library's servers import the code of this checkout (and `bench.handler`).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
SUPERVISOR = str(Path(sys.executable).parent / "supervisor")

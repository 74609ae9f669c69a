"""`python -m supervisor` is the `supervisor` command."""

from supervisor.cli import main

raise SystemExit(main())

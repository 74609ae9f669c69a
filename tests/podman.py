"""podman as the container suites run it (tests/container, tests/systemd): their settings
(tests/container/containers.conf: runc, no default ulimits), a failure shown whole."""

import os
import subprocess
from pathlib import Path

CONTAINERS_CONF = str(Path(__file__).resolve().parent / "container" / "containers.conf")
ENV = {**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF}  # podman's environment


def podman(
    *args: str, timeout: float = 60.0, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` (its output captured); AssertionError on failure when `check`."""
    done = subprocess.run(
        ["podman", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done

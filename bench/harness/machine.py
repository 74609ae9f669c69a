"""The machine the benchmarks run on: its tools, the C contenders built, its description.

When run as root, the missing Debian packages are installed with apt-get (wrk, xinetd,
ucspi-tcp, gcc); bench/c/ is compiled with gcc -O2 into a temporary directory; the descriptor
limit is raised for the run (1000 servers need more than 1024 descriptors).
"""

import contextlib
import datetime
import os
import platform
import resource
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from bench.harness.places import BENCH

PACKAGES: Mapping[str, str] = {
    "wrk": "wrk",
    "xinetd": "xinetd",
    "tcpserver": "ucspi-tcp",
    "gcc": "gcc",
}


def missing_tools() -> list[str]:
    return [
        binary
        for binary in PACKAGES
        if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists()
    ]


def ensure_tools() -> list[str]:
    """Install the missing Debian packages when root; returns what is still missing."""
    wanted = [PACKAGES[binary] for binary in missing_tools()]
    if wanted and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(wanted)} with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["update"], ["install", "-y", "--no-install-recommends", *wanted]):
            subprocess.run(  # noqa: S603
                ["apt-get", *argv],  # noqa: S607
                stdout=subprocess.DEVNULL,
                env=env,
                check=False,
            )
    return missing_tools()


def compile_c(build: Path) -> str | None:
    """Compile bench/c/ into `build`; None when done, else the reason."""
    if shutil.which("gcc") is None:
        return "gcc is not installed"
    for name in ("server", "responder", "rtt"):
        source = str(BENCH / "c" / f"{name}.c")
        result = subprocess.run(  # noqa: S603
            ["gcc", "-O2", "-Wall", "-pthread", "-o", str(build / name), source],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return f"gcc {name}.c: {result.stderr.strip().splitlines()[-1:]}"
    return None


@contextlib.contextmanager
def more_files() -> Iterator[None]:
    """1000 servers need more than 1024 descriptors: raise the soft limit to the hard one for
    this process and what it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def version_of(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(  # noqa: S603
            list(argv), capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "-"
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else "-"


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cpu_line() -> str:
    """The `cpu:` line of a results header: the model, the CPUs, the load average now."""
    load_avg = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"cpu:       {cpu_model()} ({os.cpu_count()} CPUs; load average {load_avg} at start)"

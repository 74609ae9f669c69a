"""The CPython fork floor: `python bench/fork_floor.py SECONDS`.

A process of the supervisor's size (it imports what the supervisor imports to serve: its
command, core and reload modules and the benchmark's handler) runs fork(), os._exit(0) in the
child and waitpid() in the parent, in a loop for SECONDS. It prints one JSON line: forks, the
seconds they took, the CPU seconds (user + system, its own and its reaped children's), the
minor page faults (likewise) and its resident size. No server forks faster than this in Python
on this machine: every fork-per-request server also accepts, serves and closes.
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.handler
import supervisor.cli
import supervisor.core
import supervisor.reload

# What a running supervisor has imported: its command, core and reload modules (and whatever
# they import themselves: prometheus-client and psutil only if the supervisor's own parent
# process loads them) and the handler. Nothing more, so that the floor is not bigger than the
# supervisor it is compared with: bench/compare.py prints both sizes.
LOADED = [bench.handler, supervisor.cli, supervisor.core, supervisor.reload]


def usage() -> tuple[float, int]:
    """CPU seconds and minor faults of this process and its reaped children."""
    cpu, faults = 0.0, 0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        used = resource.getrusage(who)
        cpu += used.ru_utime + used.ru_stime
        faults += used.ru_minflt
    return cpu, faults


def resident() -> int:
    """This process's resident size in bytes (/proc/self/statm, without importing psutil)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    seconds = float(sys.argv[1])
    cpu_before, faults_before = usage()
    forks = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forks += 1
    elapsed = time.perf_counter() - started
    cpu_after, faults_after = usage()
    print(
        json.dumps(
            {
                "forks": forks,
                "seconds": elapsed,
                "cpu": cpu_after - cpu_before,
                "minflt": faults_after - faults_before,
                "rss": resident(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

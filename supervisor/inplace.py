"""An upgrade in place (upgrade.py): the new code exec'd in this very process.

When: as PID 1 (handing over to a child and exiting would end the container), and when nothing
would follow a new process (`in_place`). What it needs: the configuration that runs
(`changed_since`: the exec'd code has nothing to fall back on), and the new code checked in a
child first (`Preflight`: it imports, the file loads, the handlers import). Then the caller
(core.py) stops accepting, waits for its request threads, and execs (`exec_in_place`) with its
sockets, its pidfile's locked descriptor (record locks survive exec), its counters and the
control connection that asked, all described in the manifest the new code reads as it would a
handover's (upgrade.Takeover, without a channel).
"""

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from supervisor import config
from supervisor.config import Config
from supervisor.errors import SupervisorError
from supervisor.loop import Loop, Timer
from supervisor.upgrade import READY_TIMEOUT, command, environment, memfd


def in_place() -> bool:
    """Whether an upgrade execs the new code in this very process rather than handing over to
    a child and exiting: as PID 1 (the container would end), and when nothing would follow
    the new process: a parent that waits for this one (a shell, tini or `docker run --init`,
    runit, s6) would see it exit. systemd follows MAINPID (NOTIFY_SOCKET), and a daemon's
    parent is the system's init (not a container's tini, which waits for its child: ppid 1
    alone does not tell). $SUPERVISOR_UPGRADE_MODE (`handover` or `exec`) decides instead,
    except as PID 1."""
    if os.getpid() == 1:
        return True
    chosen = os.environ.get("SUPERVISOR_UPGRADE_MODE", "")
    if chosen in ("handover", "exec"):
        return chosen == "exec"
    if os.environ.get("NOTIFY_SOCKET"):
        return False
    if os.getppid() != 1:
        return True
    try:
        with open("/proc/1/comm") as comm:
            init = comm.read().strip()
    except OSError:
        return True
    return init not in ("systemd", "init")


def changed_since(path: str, running: Config) -> str | None:
    """Why an upgrade in place cannot run the file at `path` (None: it is the configuration
    that runs): the exec'd code has nothing to fall back on if it cannot bind a new address
    or a check refuses it (reload it first). The pidfile is the running one's either way."""
    try:
        loaded = config.load(path)
    except SupervisorError as exc:
        return f"an upgrade in place needs the running configuration: {exc}"
    settings = dataclasses.replace(loaded.supervisor, pidfile=running.supervisor.pidfile)
    if (loaded.servers, loaded.metrics, settings) != (
        running.servers,
        running.metrics,
        running.supervisor,
    ):
        return (
            f"{path} has changed since it was loaded: an upgrade in place runs the "
            "configuration that runs now (supervisor reload first)"
        )
    return None


class Preflight:
    """The new code, checked in a child before an exec in place (`check --preflight`): its
    one-line error, if any. Success is its `ok` line, not its exit status, which PID 1's
    reaping of strangers may have collected first."""

    def __init__(self, config_path: str, on_done: Callable[[str | None], None]) -> None:
        self._on_done = on_done
        self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and code)
            command(config_path, "check", "--preflight"),
            env=environment(None),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid
        self._output = bytearray()
        self._reported = False
        self._timer: Timer | None = None

    def attach(self, loop: Loop) -> None:
        assert self.process.stdout is not None  # noqa: S101
        output = self.process.stdout

        def too_long() -> None:
            if not self._reported:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self._reported = True
                self._on_done(f"the check of the new code took over {READY_TIMEOUT:g}s")

        self._timer = loop.call_later(READY_TIMEOUT, too_long)
        os.set_blocking(output.fileno(), False)

        def read() -> None:
            try:
                chunk = os.read(output.fileno(), 65536)
            except BlockingIOError:
                return
            self._output = (self._output + chunk)[-4096:]
            if not chunk:
                loop.remove_reader(output)
                output.close()
                self._report()

        loop.add_reader(output, read)

    def _report(self) -> None:
        if self._reported:
            return
        self._reported = True
        if self._timer is not None:
            self._timer.cancel()
        lines = self._output.decode(errors="replace").strip().splitlines() or ["no output"]
        last = lines[-1]
        if re.search(r": ok, \d+ servers$", last):
            self._on_done(None)
        else:
            self._on_done(last.removeprefix("supervisor: "))

    def reap(self) -> bool:
        """Collect it once it has exited (its output says how it went)."""
        return self.process.poll() is not None

    def abandon(self) -> None:
        """Stopping instead: no exec (the caller cancels it); the check is killed."""
        self._reported = True
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def close_in_child(self) -> None:
        if self.process.stdout is not None and not self.process.stdout.closed:
            with contextlib.suppress(OSError):
                os.close(self.process.stdout.fileno())


def exec_in_place(config_path: str, described: Mapping[str, Any], keep: Iterable[int]) -> None:
    """Replace this process with the new code (it returns only if the exec failed: OSError).
    The descriptors in `keep` are passed on; the caller has blocked its signals (the mask and
    the pending signals survive exec, and a signal to PID 1 without a handler is dropped)."""
    manifest_fd = memfd(json.dumps(described).encode())
    kept = [manifest_fd, *keep]
    try:
        for fd in kept:
            os.set_inheritable(fd, True)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        arguments = command(config_path, "run")
        os.execve(arguments[0], arguments, environment(f"-:{manifest_fd}"))  # noqa: S606
    except OSError:
        for fd in kept[1:]:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
        os.close(manifest_fd)
        raise

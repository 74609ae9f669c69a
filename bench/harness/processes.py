"""The processes the harness starts: each in its own session, its output lines read by threads
and timestamped, its process group killed (SIGTERM, then SIGKILL after 5 s) when it is no
longer needed and, for all that are left, at the end of the run.
"""

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence


class Proc:
    """A process in its own session; its output lines are read by threads, timestamped."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.popen = subprocess.Popen(  # noqa: S603 (argv built here from fixed parts)
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
        )
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.tail: list[str] = []
        self.out: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, keep), daemon=True)
            for stream, keep in ((self.popen.stdout, self.out), (self.popen.stderr, self.tail))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self, stream: object, keep: list[str]) -> None:
        assert stream is not None  # noqa: S101 (PIPE)
        for raw in stream:  # type: ignore[attr-defined]
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.put((time.perf_counter(), line))
            keep.append(line)
            del keep[:-200]
        self.lines.put(None)

    def wait_line(self, match: Callable[[str], bool], timeout: float) -> tuple[float, str] | None:
        """The next line (from now on) that matches, with when it was read; None at the end of
        the output or after `timeout`."""
        deadline = time.perf_counter() + timeout
        while (left := deadline - time.perf_counter()) > 0:
            try:
                item = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if item is None:
                self.lines.put(None)  # stays at the end for the next caller
                return None
            if match(item[1]):
                return item
        return None

    def drain(self) -> None:
        """Forget the lines read so far."""
        with contextlib.suppress(queue.Empty):
            while True:
                item = self.lines.get_nowait()
                if item is None:
                    self.lines.put(None)
                    return

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 5 s."""
        for signum, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signum)
            try:
                self.popen.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # Whatever is left of the group (a child that outlived its parent).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        for reader in self._readers:
            reader.join(2)


class Processes:
    """Every process started, stopped in reverse order at the end."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, env)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()


def wait_quietly(proc: Proc, timeout: float) -> None:
    """Wait for a bounded program to end (it is stopped by the caller either way)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout)

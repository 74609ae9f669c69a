"""Prefork mode: long-lived workers that accept on the server's shared socket themselves.

The Apache prefork / gunicorn sync-worker model. The supervisor forks `workers` children per
server; each waits in `select()` on the listening socket and on its stop pipe, accepts, runs the
handler, and goes on, one request at a time. Per worker, two pipes connect it to the parent:

- the stop pipe (parent -> worker): the parent closes its end to retire the worker, which then
  finishes the request it is running and exits; if the parent dies, the worker sees the same EOF
  and exits, so no worker outlives its supervisor;
- the report pipe (worker -> parent): one fixed-size record per request (succeeded, duration),
  written in small batches and read in the parent's loop, so request counts and the duration
  histogram stay exact; the first record (duration -1) says the worker is ready.

A worker also exits (status 0, and is replaced at once) after `max_requests` requests plus a
random jitter, or once its peak RSS passes `max_rss` MiB. A worker that dies is replaced at
once, unless it died before it was ready: then with an exponential back-off (0.1 s, doubling up
to 10 s), so a handler that breaks every new process cannot make the supervisor fork-loop.
"""

import contextlib
import errno
import logging
import os
import resource
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor import logs
from supervisor.guards import RejectionLog
from supervisor.loop import Loop, Timer
from supervisor.server import Server
from supervisor.sockets import TRANSIENT_ERRNOS

log = logging.getLogger("supervisor")

REPORT = struct.Struct("=?d")  # succeeded, duration in seconds: written atomically (< PIPE_BUF)
READY = REPORT.pack(True, -1.0)
TURNED_AWAY = -2.0  # the duration of a report for a client the worker's guard rejected
REJECTED = REPORT.pack(False, TURNED_AWAY)
NOT_VERIFIED = -3.0  # ... for one its hosted server's verify_request refused
REFUSED = REPORT.pack(False, NOT_VERIFIED)
SERVICE_INTERVAL = 0.5  # seconds between a hosted server's service_actions (as serve_forever)
BATCH = 32  # reports a busy worker holds before it writes them
BATCH_BYTES = BATCH * REPORT.size
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
RESOURCE_PAUSE = 0.1  # seconds a worker waits after EMFILE/ENFILE/ENOBUFS/ENOMEM on accept


# -- in the worker ----------------------------------------------------------------------------


def serve(server: Server, stop_fd: int, report_fd: int) -> int:
    """The worker's loop; returns its exit status (0: told to stop, or recycled).

    Reports are written in batches: when the worker is about to wait for a connection, after
    BATCH requests, and before it exits. Each write wakes the supervisor; once per request that
    cost about a tenth of the throughput. The parent's counts trail a busy worker by at most
    BATCH requests (a scrape reads the pipes first), an idle one not at all. The stop pipe is
    looked at after every request: a retired worker takes no new one."""
    limit = _prepare(server, stop_fd)
    listener = server.listener.socket
    listen_fd = listener.fileno()
    # accept() itself, without socket.accept()'s per-call enum conversions of family and type
    family, kind, proto = listener.family, listener.type, listener.proto
    os.write(report_fd, READY)
    reports = bytearray()
    rejections = RejectionLog()
    served = 0
    stop = select.poll()
    stop.register(stop_fd, select.POLLIN)
    # A hosted server's service_actions, in each worker (its own copy of the object), about
    # every SERVICE_INTERVAL: after a request or a wait, as serve_forever's loop calls it.
    wait = SERVICE_INTERVAL if server.services else None
    due = time.monotonic() + SERVICE_INTERVAL
    try:
        while True:
            if wait is not None and time.monotonic() >= due:
                server.service()
                due = time.monotonic() + SERVICE_INTERVAL
            try:
                fd, client_address = listener._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                _flush(report_fd, reports)
                if stop_fd in select.select([listen_fd, stop_fd], [], [], wait)[0]:
                    return 0
                continue
            except OSError as exc:
                if _accept_failed(server, exc, stop_fd):
                    return 0
                continue
            report = _run(server, fd, client_address, rejections, (family, kind, proto))
            reports += report
            served += report is not REJECTED and report is not REFUSED
            if len(reports) >= BATCH_BYTES:
                _flush(report_fd, reports)
            if _stop_requested(stop) or _recycled(server, served, limit):
                return 0
    finally:
        _flush(report_fd, reports)


def _run(
    server: Server,
    fd: int,
    client_address: Any,
    rejections: RejectionLog,
    kind: tuple[int, int, int],
) -> bytes:
    """Admit and run one accepted connection; its report."""
    # (allow / deny only: config.py refuses the other guards in prefork mode)
    if server.guard is not None and server.admit(fd, client_address, rejections)[0]:
        return REJECTED
    request = socket.socket(*kind, fileno=fd)
    if server.verifies and not server.verify(request, client_address):
        return REFUSED
    started = time.monotonic()
    ok = server.handle(request, client_address)
    return REPORT.pack(ok, time.monotonic() - started)


def _prepare(server: Server, stop_fd: int) -> int:
    """Set the worker up; return its request limit (max_requests plus its jitter, or 0)."""
    config = server.config
    os.set_blocking(stop_fd, False)
    # `killall -HUP supervisor` or logrotate's `-USR1` reach the workers too (same name): they
    # are the supervisor's to act on, not a reason for a worker to die mid-request.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # (the supervisor's upgrade: not theirs)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if config.max_rss and start > config.max_rss * 1024:
        log.warning(
            "%s: max_rss = %d MiB is below a new worker's own size (%d MiB, most of it shared "
            "with the supervisor): every worker will be replaced after each request",
            server.name,
            config.max_rss,
            start // 1024,
            extra=logs.about(server.name),
        )
    if not config.max_requests:
        return 0
    # The jitter: not the random module, which would reseed in every forked child.
    return config.max_requests + int.from_bytes(os.urandom(4), "big") % (
        config.max_requests_jitter + 1
    )


def _accept_failed(server: Server, exc: OSError, stop_fd: int) -> bool:
    """Whether the worker should stop after accept() failed with `exc`."""
    if exc.errno == errno.EINVAL:
        return True  # the supervisor shut the socket down: stopping, moved or removed
    if exc.errno in TRANSIENT_ERRNOS:
        return False
    log.warning(
        "%s: worker %d: accept failed (%s)",
        server.name,
        os.getpid(),
        exc,
        extra=logs.about(server.name),
    )
    return bool(select.select([stop_fd], [], [], RESOURCE_PAUSE)[0])


def _recycled(server: Server, served: int, limit: int) -> bool:
    """Whether the worker has done its share: max_requests, or max_rss passed."""
    if limit and served >= limit:
        log.info(
            "%s: worker %d recycled after %d requests",
            server.name,
            os.getpid(),
            served,
            extra=logs.about(server.name),
        )
        return True
    max_rss = server.config.max_rss
    if max_rss and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > max_rss * 1024:
        log.info(
            "%s: worker %d recycled: its RSS passed max_rss (%d MiB)",
            server.name,
            os.getpid(),
            max_rss,
            extra=logs.about(server.name),
        )
        return True
    return False


def _flush(report_fd: int, reports: bytearray) -> None:
    if reports:
        with contextlib.suppress(BrokenPipeError):  # the supervisor is gone: nobody to tell
            os.write(report_fd, reports)  # at most BATCH_BYTES < PIPE_BUF: one atomic write
        reports.clear()


def _stop_requested(stop: "select.poll") -> bool:
    """The parent closed the stop pipe (or wrote to it): a look without waiting, one system
    call (poll, not a read that raises BlockingIOError after every request)."""
    return bool(stop.poll(0))


# -- in the parent ----------------------------------------------------------------------------


@dataclass(eq=False)
class Worker:
    """A worker as the parent sees it."""

    pid: int
    stop_fd: int  # our end of the stop pipe; closed to retire the worker
    report_fd: int  # our end of the report pipe
    ready: bool = False
    retired: bool = False
    _partial: bytes = b""

    def retire(self) -> None:
        if not self.retired:
            self.retired = True
            with contextlib.suppress(OSError):
                os.close(self.stop_fd)


Spawn = Callable[[Server, Callable[[], int]], int | None]


@dataclass(eq=False)
class Pool:
    """The workers of one prefork server, and keeping their number up."""

    server: Server
    loop: Loop
    spawn: Spawn  # forks a worker running the given loop; returns its pid, None if fork failed
    workers: dict[int, Worker] = field(default_factory=dict)
    failures: int = 0  # workers in a row that died before they were ready
    _respawn: Timer | None = None
    closed: bool = False  # stopping, or the server is gone: no more workers

    @property
    def current(self) -> int:
        return sum(1 for worker in self.workers.values() if not worker.retired)

    def fill(self) -> None:
        """Start workers until the server has `workers` current ones (unless backing off)."""
        if self.closed or self._respawn is not None:
            return
        while self.current < self.server.config.workers:
            if not self._start_one():  # out of processes or files: logged; try again later
                self.failures += 1
                self._back_off("cannot start workers")
                return

    def _start_one(self) -> bool:
        try:
            stop_read, stop_write = os.pipe()
            try:
                report_read, report_write = os.pipe()
            except OSError:
                os.close(stop_read)
                os.close(stop_write)
                raise
        except OSError as exc:
            log.error(
                "%s: cannot start a worker (%s)",
                self.server.name,
                exc.strerror or exc,
                extra=logs.about(self.server.name),
            )
            return False

        def body() -> int:
            os.close(stop_write)
            os.close(report_read)
            return serve(self.server, stop_read, report_write)

        try:
            pid = self.spawn(self.server, body)
        finally:
            os.close(stop_read)
            os.close(report_write)
        if pid is None:
            os.close(stop_write)
            os.close(report_read)
            return False
        os.set_blocking(report_read, False)
        worker = Worker(pid, stop_write, report_read)
        self.workers[pid] = worker
        self.loop.add_reader(report_read, lambda: self._read(worker))
        return True

    def collect_reports(self) -> None:
        """Read every worker's pending reports now (before a scrape renders the counts)."""
        for worker in list(self.workers.values()):
            if worker.report_fd >= 0:
                self._read(worker)

    def _read(self, worker: Worker) -> None:
        """Take the worker's request reports (all that are there); stop reading at EOF."""
        chunks = [worker._partial]
        eof = False
        while True:
            try:
                chunk = os.read(worker.report_fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        whole = len(data) - len(data) % REPORT.size
        worker._partial = data[whole:]
        stats = self.server.stats
        for ok, duration in REPORT.iter_unpack(data[:whole]):
            if duration >= 0:
                stats.request_done(ok, duration)
            elif duration == TURNED_AWAY:
                stats.rejected["denied"] += 1
            elif duration == NOT_VERIFIED:
                stats.rejected["verify_request"] += 1
            elif not worker.ready:
                worker.ready = True
                self.failures = 0  # a worker got as far as its loop: the handler is fine
                log.debug(
                    "%s: worker %d ready",
                    self.server.name,
                    worker.pid,
                    extra=logs.about(self.server.name),
                )
        if eof:
            self._close_reports(worker)

    def _close_reports(self, worker: Worker) -> None:
        if worker.report_fd >= 0:
            self.loop.remove_reader(worker.report_fd)
            os.close(worker.report_fd)
            worker.report_fd = -1

    def exited(self, pid: int, ok: bool) -> None:
        """A worker was reaped: collect its last reports and replace it if it was current."""
        worker = self.workers.pop(pid, None)
        if worker is None:
            return
        if worker.report_fd >= 0:
            self._read(worker)
            self._close_reports(worker)
        replace = not worker.retired
        worker.retire()
        if not replace or self.closed:
            return
        if worker.ready or ok:
            self.fill()
            return
        if self._respawn is None:  # one step of the back-off per round of replacements
            self.failures += 1
        self._back_off("workers die before they are ready")

    def _back_off(self, reason: str) -> None:
        if self._respawn is not None or self.closed:
            return
        delay = min(BACKOFF_FIRST * 2 ** max(self.failures - 1, 0), BACKOFF_MAX)
        log.warning(
            "%s: %s; starting the next in %.1fs",
            self.server.name,
            reason,
            delay,
            extra=logs.about(self.server.name),
        )

        def again() -> None:
            self._respawn = None
            self.fill()

        self._respawn = self.loop.call_later(delay, again)

    def retire_all(self) -> None:
        """Let every worker finish its request and exit (a reload starts new ones next)."""
        for worker in self.workers.values():
            worker.retire()
        if self._respawn is not None:
            self._respawn.cancel()
            self._respawn = None
        self.failures = 0

    def close(self) -> None:
        """No more workers: the server is stopping or gone. Running ones finish and exit."""
        self.closed = True
        self.retire_all()

    def close_in_child(self) -> None:
        """In any forked child: drop the parent's ends of every worker's pipes."""
        for worker in self.workers.values():
            for fd in (worker.stop_fd, worker.report_fd):
                if fd >= 0 and not (fd == worker.stop_fd and worker.retired):
                    with contextlib.suppress(OSError):
                        os.close(fd)

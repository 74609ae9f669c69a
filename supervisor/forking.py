"""The supervisor's side of the fork server (forkserver.py, which says why it exists).

A `ForkServer` starts the process, hands it accepted connections of fork-mode stream servers,
and turns its reports into the supervisor's own bookkeeping through `Events`: a forked child is
adopted into the child table (so `max_children`, stop, status and metrics see it as before), its
exit comes back with its status and CPU time. Admission stays in the supervisor: a connection is
counted before it is handed over, so `max_children` is never exceeded.

Lifecycle: STARTING (spawned; the supervisor forks requests itself meanwhile) -> READY (its
handlers imported; per server, those it could not import stay with the supervisor) -> CLOSING
(our end shut for writing at a reload or stop: it takes no more requests, reports its children's
exits, and exits when they are done) -> GONE (end of file). A fork server that dies while
current is replaced after a back-off; what it had forked is then no longer tracked.
"""

import array
import contextlib
import fcntl
import functools
import logging
import marshal
import os
import signal
import socket
import sys
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from supervisor import forkserver, logs
from supervisor.children import ExitStatus
from supervisor.loop import Loop

log = logging.getLogger("supervisor")

READY_SLOW = 30.0  # seconds after which a fork server not ready yet is worth a warning
CONTROL_TIMEOUT = 1.0  # seconds a control message may wait for room in a full channel
EXIT_TIMEOUT = 1.0  # seconds the final kill() waits for it to kill its children and exit

SCRIPT = forkserver.__file__


@dataclass(frozen=True, slots=True)
class Usage:
    """The part of a child's rusage the metrics use."""

    ru_utime: float
    ru_stime: float


@dataclass(slots=True)
class Handover:
    """An accepted connection for the fork server: `fd` is open until it is sent."""

    server: Any
    fd: int
    client_address: Any
    started: float  # monotonic, at accept
    source: Hashable = None  # the client's source (guards.py), released when it is done


class Events(Protocol):
    """What the supervisor does with the fork server's reports."""

    def forked(self, handover: Handover, pid: int) -> None: ...
    def fork_failed(self, handover: Handover, reason: str, shortage: bool) -> None: ...
    def exited(self, pid: int, status: ExitStatus, usage: Usage) -> None: ...
    def lost(self, pid: int) -> None: ...
    def lost_request(self, handover: Handover) -> None: ...
    def fork_server_gone(self, fork_server: "ForkServer") -> None: ...


def setup_for(
    servers: Iterable[Any], log_format: str, log_level: str, journal_pid: int, log_json: bool
) -> bytes:
    """The setup the process reads: sys.path, logging (`log_format`: the text one; `log_json`:
    JSON lines instead), and what `self.server` shows per server."""
    specs = []
    for server in servers:
        listening = server.listener.socket
        spec: dict[str, Any] = {
            "name": server.name,
            "handler": server.handler_spec,
            "server_address": server.server_address,
            "family": int(listening.family),
            "type": int(listening.type),
            "proto": listening.proto,
            "max_packet_size": server.max_packet_size,
        }
        if server.child_setup is not None:  # (absent otherwise: the fork server stays small)
            spec["child_setup"] = server.child_setup
        if server.config.limits.max_per_source:
            spec["report_done"] = True
        if server.hosted is not None:  # (made and adopted there: forkserver.py)
            spec["server"] = server.config.server
            spec["reports_errors"] = server.reports_errors
        if not server.listener.address.is_unix:  # (server_name: the fork server looks it up)
            spec["server_port"] = server.server_port
        specs.append(spec)
    setup = {
        "path": list(sys.path),
        "argv": list(sys.argv),
        "locations": package_locations(servers),
        "log_format": log_format,
        "log_level": log_level.upper(),
        "journal_pid": journal_pid,
        "log_json": log_json,
    }
    return marshal.dumps({**setup, "servers": specs})


def package_locations(servers: Iterable[Any]) -> dict[str, tuple[str, list[str] | None]]:
    """Where each handler's top-level package (or module) was loaded from: its file, and its
    search locations for a package. The fork server runs no site hooks (-S), so a package that
    a `.pth` import hook makes importable here (an editable install) is loaded from there by
    location when sys.path alone does not find it."""
    locations = {}
    for server in servers:
        modules = [server.RequestHandlerClass.__module__, server.config.server.partition(":")[0]]
        for top in {module.partition(".")[0] for module in modules if module}:
            spec = getattr(sys.modules.get(top), "__spec__", None)
            if spec is not None and spec.has_location and spec.origin:
                search = spec.submodule_search_locations
                locations[top] = (spec.origin, None if search is None else list(search))
    return locations


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate numbered above the fds the process receives them as."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, forkserver.DONE_FD + 1)


def _setup_file(data: bytes) -> int:
    fd = os.memfd_create("supervisor-forkserver-setup", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)  # (one write: a memfd takes it all)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


@functools.cache
def interpreter_flags() -> tuple[str, ...]:
    """The interpreter options the supervisor runs with (-O, -W, -X ...), plus -S (no site
    hooks) and -P (the script's directory is not put on sys.path). Found once, before the
    supervisor drops its privileges (daemon.run): the user it drops to may not be able to
    read the standard library, and this imports from it."""
    import subprocess  # noqa: PLC0415 (not for a run without fork servers)

    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return ("-S", "-P", *(flag for flag in flags if flag not in ("-S", "-P")))


class ForkServer:
    """One fork server process and its channel."""

    def __init__(self, loop: Loop, events: Events, setup: bytes, done_fd: int) -> None:
        self.loop = loop
        self.events = events
        self.serving: set[str] = set()  # the servers it can fork for, once it says so
        self.is_ready = False  # its "ready" came
        self.closing = False
        self.gone = False
        self.reaped = False
        self.pending: dict[int, Handover] = {}  # seq -> sent, its pid not reported yet
        self.pids: set[int] = set()  # forked by it, not yet reported as exited
        self._seq = 0
        self._queued: list[Handover] = []
        self._buffer = bytearray(forkserver.REPORT_SIZE)  # reports are read into this
        self._view = memoryview(self._buffer)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        setup_fd = channel_fd = done = -1
        try:
            setup_fd = _high_fd(fd := _setup_file(setup))
            os.close(fd)
            channel_fd = _high_fd(theirs.fileno())
            done = _high_fd(done_fd)
            self.pid = os.posix_spawn(
                sys.executable,
                [sys.executable, *interpreter_flags(), SCRIPT],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, channel_fd, forkserver.CHANNEL_FD),
                    (os.POSIX_SPAWN_DUP2, setup_fd, forkserver.SETUP_FD),
                    (os.POSIX_SPAWN_DUP2, done, forkserver.DONE_FD),
                ],
                setsigmask=forkserver.HELD,  # (held from the first instruction on)
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            for fd in (setup_fd, channel_fd, done):
                if fd >= 0:
                    os.close(fd)
        ours.setblocking(False)
        self.channel = ours
        self.loop.add_reader(ours, self._on_readable)
        self._deadline = loop.call_later(READY_SLOW, self._not_ready)

    def _not_ready(self) -> None:
        """STARTING for long: say so (an import may be slow on purpose: it is not killed; a
        reload kills one that is still not ready, see close)."""
        if not self.is_ready and not self.gone:
            log.warning(
                "fork server %d: not ready after %gs (a handler module's import is slow or "
                "stuck); the supervisor forks requests itself meanwhile",
                self.pid,
                READY_SLOW,
            )

    def __repr__(self) -> str:
        return f"<ForkServer pid {self.pid}>"

    def serves(self, name: str) -> bool:
        return not self.closing and name in self.serving

    def queue(self, handover: Handover) -> None:
        """Take an accepted connection; `send_queued` hands it over."""
        self._queued.append(handover)

    def send_queued(self) -> list[Handover]:
        """Hand the queued connections over in one message, and close them here; those that
        cannot be sent now are returned for the supervisor to fork itself."""
        queued, self._queued = self._queued, []
        if not queued:
            return []
        requests = []
        for handover in queued:
            self._seq += 1
            requests.append((handover.server.name, self._seq, handover.client_address))
        fds = array.array("i", [handover.fd for handover in queued])
        try:
            self.channel.sendmsg(
                [marshal.dumps(("R", requests))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
            )
        except OSError:
            return queued
        for (_, seq, _), handover in zip(requests, queued, strict=True):
            os.close(handover.fd)
            self.pending[seq] = handover
        return []

    def signal_children(self, signum: int) -> None:
        """Signal all its children, those whose pids have not come yet too."""
        self._send(("K", int(signum)))  # (an int: marshal takes no enum)

    def signal_child(self, pid: int, signum: int) -> None:
        """Signal one of its children, if it has not reaped it yet (a pid reused after that
        is safe, unless the fork server itself reuses it before its exit report arrives)."""
        self._send(("T", pid, int(signum)))

    def reopen_log(self) -> None:
        """Give the process our stderr (a reopened log file) as its stdout and stderr."""
        self._send(("L",), fd=2)

    def _send(self, command: tuple[Any, ...], fd: int | None = None) -> bool:
        """Send a control message. A channel full of requests it has not read yet gets up to
        CONTROL_TIMEOUT for room (rare, short, and these messages must not be lost); False
        if it could not be sent (logged)."""
        if self.gone:
            return False
        fds = (
            [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", (fd,)))]
        )
        message = marshal.dumps(command)
        try:
            try:
                self.channel.sendmsg([message], fds)
            except BlockingIOError:
                self.channel.settimeout(CONTROL_TIMEOUT)
                try:
                    self.channel.sendmsg([message], fds)
                finally:
                    self.channel.setblocking(False)
        except OSError as exc:
            # Broken pipe: it has exited (at a stop, once its children were done; otherwise
            # its end of file tells the loop, which replaces it). Anything else is an error.
            gone = exc.errno in forkserver.GONE_ERRNOS
            log.log(
                logging.DEBUG if gone else logging.ERROR,
                "fork server %d: cannot send %s (%s)",
                self.pid,
                command[0],
                exc,
            )
            return False
        return True

    def close(self) -> None:
        """CLOSING: no more requests; it exits once its children are done. One that is not
        ready yet may be stuck in an import: it is killed instead, as is one that cannot be
        told."""
        if self.closing or self.gone:
            return
        self.closing = True
        if not self.is_ready or not self._send(("C",)):
            self._kill_process()

    def _kill_process(self) -> None:
        """SIGKILL it: end of file follows, and with it GONE."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def close_in_child(self) -> None:
        """In a child the supervisor forks: its copy of the channel would hide the
        supervisor's end from the fork server."""
        if not self.gone:
            os.close(self.channel.fileno())

    def kill(self) -> None:
        """At the very end (the loop has stopped): its children are killed (none is left
        after a stop that waited for them), then it, once they are, or after EXIT_TIMEOUT;
        it is reaped."""
        self._deadline.cancel()
        if not self.gone:
            if self._send(("K", int(signal.SIGKILL))) and self._send(("C",)):
                self._wait_for_end_of_file(EXIT_TIMEOUT)
            self.loop.remove_reader(self.channel)
            self.channel.close()
            self.gone = True
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            self.reaped = True

    def _wait_for_end_of_file(self, timeout: float) -> None:
        """Read (and drop) reports until it has exited: blocking, for kill() only."""
        self.channel.settimeout(timeout)
        with contextlib.suppress(OSError):
            while self.channel.recv(forkserver.REPORT_SIZE):
                pass

    def reap(self) -> bool:
        """Collect the process if it has exited; True once it has been."""
        if not self.reaped:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid = self.pid  # (collected as a stranger, as PID 1)
            self.reaped = pid == self.pid
        return self.reaped

    def _on_readable(self) -> None:
        while not self.gone:
            try:
                size = self.channel.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                size = 0
            if not size:
                self._gone()
                return
            try:
                # (marshal: our own fork server, on a socket pair)
                for record in marshal.loads(self._view[:size]):  # noqa: S302
                    self._report(record)
            except Exception:  # a report we cannot read must not take the supervisor down
                log.exception("fork server %d: unreadable report; killing it", self.pid)
                self._kill_process()
                self._gone()
                return

    def _report(self, record: tuple[Any, ...]) -> None:
        kind = record[0]
        if kind == "F":
            handover = self.pending.pop(record[1])
            self.pids.add(record[2])
            self.events.forked(handover, record[2])
        elif kind == "X":
            self.pids.discard(record[1])
            self.events.exited(record[1], ExitStatus.decode(record[2]), Usage(*record[3:5]))
        elif kind == "Z":
            self.pids.discard(record[1])
            self.events.lost(record[1])
        elif kind == "E":  # (a shortage: fork() itself failed, with that errno)
            self.events.fork_failed(self.pending.pop(record[1]), record[2], bool(record[3]))
        elif kind == "serves":
            self.serving.add(record[1])
        elif kind == "ready":
            self.is_ready = True
            self._deadline.cancel()
            log.info("fork server %d: forking for %d servers", self.pid, len(self.serving))
            if not record[1]:
                log.warning(
                    "fork server %d: a handler module started a thread at import; its "
                    "children run threading's after-fork hook (slower)",
                    self.pid,
                )
        elif kind == "failed":
            log.warning(
                "%s: the fork server cannot import the handler (%s); the supervisor forks its "
                "requests itself",
                record[1],
                record[2],
                extra=logs.about(record[1]),
            )

    def _gone(self) -> None:
        """GONE: end of file. After a clean exit nothing is left to account for; if it died,
        what it had taken (forked, or about to be) is no longer tracked: the supervisor
        counts those requests as finished, and their children, if any, run on as orphans."""
        self.gone = True
        self.loop.remove_reader(self.channel)
        self.channel.close()
        taken = list(self.pending.values())
        if not self.closing or taken or self.pids:
            log.error(
                "fork server %d exited unexpectedly; %d requests it had taken are no longer "
                "tracked",
                self.pid,
                len(taken) + len(self.pids),
            )
        self.pending.clear()
        for handover in taken:
            self.events.lost_request(handover)
        for pid in self.pids:
            self.events.lost(pid)
        self.pids.clear()
        self._deadline.cancel()
        self.reap()
        self.events.fork_server_gone(self)

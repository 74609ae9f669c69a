"""Self-upgrade: a supervisor running the code and interpreter now installed takes over every
listening socket, with no connection refused; the old one lets its requests finish.

`supervisor upgrade` (through the control socket) or SIGUSR2 asks the running supervisor, the
old one. Its listening sockets (servers, the inherited ones no server uses, metrics, control)
are passed as inherited descriptors to `python -P -c BOOTSTRAP run -c CONFIG`, with a manifest
describing them (a memfd) and, when spawned, a channel (a socket pair); $SUPERVISOR_UPGRADE
names both. The new one loads the configuration, imports the handlers and makes its servers,
taking the sockets it still uses as a reload would (reload.prepare), and starts its fork servers
and prefork workers. Then:

- Spawned (the usual case): the new one says `ready` on the channel and waits. The old one
  stops accepting, lets go of the pidfile's lock, tells systemd the new MAINPID and says `go`
  with its counters; the new one takes the pidfile, listens on the control socket again (a
  client's SO_PEERCRED then names it) and runs its loop. The old one drains as in a stop
  (shutdown_timeout, kill_grace), sends its final counters and exits. A new one that fails
  before `ready` (its code does not import, the configuration is refused, it crashes, it is not
  ready within READY_TIMEOUT) has changed nothing: the old one says why and goes on serving.
  Both accept for a moment: a connection in the listen queue is served by whichever takes it.
- In place (inplace.py), as PID 1 (which cannot hand over and exit: the container would end)
  or under a parent that waits for its child: the new code is checked in a child, then exec'd
  in this very process, which passes the same description across the exec (no channel).

Spawned, the new interpreter forks once at its start and its first process exits: the new
supervisor is then an orphan, a child of init (or of the nearest subreaper), not of the old one.
Under systemd that makes it the service manager's own child by the time MAINPID= names it:
systemd 252 supervises a main process that is not its child as an "alien" one (it warns
"Supervising process N which is not our child"), whose exit it may not see and which it does not
wait for on stop, killing the whole unit with SIGKILL right after SIGTERM.

Messages on the channel are JSON objects, one per line. New -> old: {"pid": PID} (from the
bootstrap, once forked), then {"ready": PID, "version": V} or {"error": LINE, "status": N}. Old
-> new: {"go": COUNTERS}, then {"final": COUNTERS}.
"""

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor import __version__, stats
from supervisor.addresses import Address
from supervisor.config import SocketFile
from supervisor.errors import SupervisorError
from supervisor.loop import Loop, Timer
from supervisor.sockets import Listener
from supervisor.stats import ReloadStats, ServerStats, UpgradeStats

log = logging.getLogger("supervisor")

ENV = "SUPERVISOR_UPGRADE"
READY_TIMEOUT = 60.0  # seconds for the new supervisor to be ready
SEND_TIMEOUT = 10.0
MAX_MESSAGE = 64 * 1024 * 1024  # bytes: counters of many thousands of servers

# Run by the new interpreter (`-c`): the one place where the new code failing to import can be
# caught and said on the channel (for `run`, what it imports too). Standard library only; calls
# supervisor.cli.main, the command's entry point in every version. Spawned (a channel), it first
# forks, says the new pid and exits, the new one going on once it is an orphan (see above).
BOOTSTRAP = """\
import json, os, sys, time
first = os.environ.pop("SUPERVISOR_UPGRADE_PATH", None)
if first is not None:
    sys.path.insert(0, first)
name = os.environ.pop("SUPERVISOR_UPGRADE_NAME", "")
if name:
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)
    except Exception:
        pass
channel = os.environ.get("SUPERVISOR_UPGRADE", "").partition(":")[0]
if channel.isdigit():
    parent = os.getpid()
    pid = os.fork()
    if pid:
        os.write(int(channel), (json.dumps({"pid": pid}) + "\\n").encode())
        os._exit(0)
    while os.getppid() == parent:
        time.sleep(0.001)
try:
    from supervisor.cli import main
    if sys.argv[1:2] == ["run"]:
        import supervisor.daemon
except BaseException as exc:
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())
    line = f"cannot import the new supervisor code ({reason})"
    if channel.isdigit():
        os.write(int(channel), (json.dumps({"error": line, "status": 70}) + "\\n").encode())
    print("supervisor: " + line, file=sys.stderr)
    sys.exit(70)
sys.exit(main(sys.argv[1:]))
"""


# What Python put first on sys.path when this supervisor started (the script's directory, or
# the current one for `-m`), before any `[supervisor] path`: the new one, started with -P
# whatever the way this one was, gets it first too, so that it imports what this one would
# (core.py imports this module before any handler is imported).
FIRST_PATH = sys.path[0] if sys.path else None


class UpgradeError(SupervisorError):
    """The upgrade did not happen; the old supervisor goes on serving."""

    exit_status = os.EX_SOFTWARE


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    exit_status: int = 0
    pid: int = 0  # the supervisor serving now

    def answer(self) -> dict[str, Any]:
        """The control socket's answer."""
        return {
            "ok": self.ok,
            "message": self.message,
            "exit_status": self.exit_status,
            "pid": self.pid,
        }


# -- what is handed over ------------------------------------------------------------------


@dataclass
class Sockets:
    """The sockets a supervisor hands over: its servers', inherited ones no server uses, the
    metrics endpoint's and the control socket."""

    servers: dict[str, Listener]
    spare: list[Listener] = field(default_factory=list)
    metrics: Listener | None = None
    control: Listener | None = None

    def all(self) -> list[Listener]:
        extra = [listener for listener in (self.metrics, self.control) if listener]
        return [*self.servers.values(), *self.spare, *extra]


def _describe(listener: Listener) -> dict[str, Any]:
    return {
        "fd": listener.socket.fileno(),
        "address": dataclasses.asdict(listener.address),
        "bound": dataclasses.asdict(listener.bound),
        "created_file": listener.created_file,
        "inherited": listener.inherited,
        "fd_name": listener.fd_name,
        "file_default": listener.file_default,
    }


def _listener(entry: Mapping[str, Any]) -> Listener:
    """A Listener for a described descriptor (made close-on-exec again); ValueError."""
    fd = entry["fd"]
    if not isinstance(fd, int) or fd < 3:
        raise ValueError(f"bad descriptor {fd!r}")
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    default = entry.get("file_default")
    return Listener(
        Address(**entry["address"]),
        sock,
        Address(**entry["bound"]),
        created_file=None,  # (the old supervisor's until it has let go: see Takeover.claim)
        inherited=bool(entry.get("inherited")),
        fd_name=str(entry.get("fd_name", "")),
        socket_file=SocketFile(),
        file_default=None
        if default is None
        else (int(default[0]), int(default[1]), int(default[2])),
    )


def manifest(sockets: Sockets, old: Mapping[str, Any]) -> dict[str, Any]:
    """What the new supervisor reads: the sockets by descriptor, and `old` (pid, version,
    counters...)."""
    return {
        "servers": {name: _describe(listener) for name, listener in sockets.servers.items()},
        "spare": [_describe(listener) for listener in sockets.spare],
        "metrics": None if sockets.metrics is None else _describe(sockets.metrics),
        "control": None if sockets.control is None else _describe(sockets.control),
        "old": dict(old),
    }


def memfd(data: bytes) -> int:
    fd = os.memfd_create("supervisor-upgrade", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def command(config_path: str, *arguments: str) -> list[str]:
    """The new supervisor's command line: this interpreter's path (now installed there), its
    options, and -P (the current directory is not where the code comes from)."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    flags = [flag for flag in flags if flag != "-P"]
    return [sys.executable, "-P", *flags, "-c", BOOTSTRAP, *arguments, "-c", config_path]


def environment(value: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if value is not None:
        env[ENV] = value
    if FIRST_PATH is not None:
        env["SUPERVISOR_UPGRADE_PATH"] = FIRST_PATH
    # (the process name, which `killall supervisor` and `pgrep -x` match)
    with contextlib.suppress(OSError), open("/proc/self/comm") as comm:
        env["SUPERVISOR_UPGRADE_NAME"] = comm.read().strip()
    env.pop("WATCHDOG_PID", None)  # (the watchdog is the new main process's to keep)
    return env


# -- what is carried over: the counters ---------------------------------------------------


@dataclass
class Counted:
    """The counters a supervisor carries over an upgrade, its own objects."""

    servers: Mapping[str, ServerStats]
    reloads: ReloadStats
    upgrades: UpgradeStats
    faults: int

    def snapshot(self) -> dict[str, Any]:
        """As JSON values, for the supervisor taking over."""
        return {
            "servers": {name: stats.snapshot(each) for name, each in self.servers.items()},
            "reloads": [self.reloads.successes, self.reloads.failures],
            "upgrades": [self.upgrades.ok, self.upgrades.failed],
            "faults": self.faults,
        }

    def add(self, counted: Mapping[str, Any] | None, before: Mapping[str, Any] | None) -> int:
        """Add what the old supervisor counted (beyond `before`, what was added already) to
        these counters; return what to add to the loop's faults (an int of the caller's)."""
        if not isinstance(counted, Mapping):
            return 0
        previous = before or {}
        for name, server_counts in (counted.get("servers") or {}).items():
            target = self.servers.get(name)
            if target is None:
                continue
            try:
                stats.add(target, server_counts, (previous.get("servers") or {}).get(name))
            except (ValueError, TypeError, KeyError, IndexError):
                log.warning("upgrade: %s: the old supervisor's counters are not readable", name)
        pairs: tuple[tuple[object, tuple[str, str], str], ...] = (
            (self.reloads, ("successes", "failures"), "reloads"),
            (self.upgrades, ("ok", "failed"), "upgrades"),
        )
        with contextlib.suppress(ValueError, TypeError, IndexError):
            for totals, fields, key in pairs:
                now, then = counted.get(key) or [0, 0], previous.get(key) or [0, 0]
                for index, name in enumerate(fields):
                    grown = int(now[index]) - int(then[index])
                    setattr(totals, name, getattr(totals, name) + grown)
            return int(counted.get("faults", 0)) - int(previous.get("faults", 0))
        return 0


# -- the old supervisor, spawning the new one --------------------------------------------


class Spawned:
    """A new supervisor started by the old one, until it is ready or has failed. `pid` is the
    bootstrap's (our child) until it says the pid it forked, the new supervisor's then (see
    BOOTSTRAP), which is signalled through a pidfd."""

    def __init__(  # noqa: PLR0917 (each one needed, and all different)
        self,
        loop: Loop,
        config_path: str,
        sockets: Sockets,
        old: Mapping[str, Any],
        on_ready: Callable[["Spawned"], None],
        on_failed: Callable[[str, int], None],
    ) -> None:
        self._loop = loop
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._buffer = bytearray()
        self.done = False  # ready or failed
        self.version = "?"
        self.channel, theirs = socket.socketpair()
        manifest_fd = memfd(json.dumps(manifest(sockets, old)).encode())
        fds = [theirs.fileno(), manifest_fd, *(each.socket.fileno() for each in sockets.all())]
        try:
            self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and code)
                command(config_path, "run"),
                pass_fds=fds,
                env=environment(f"{theirs.fileno()}:{manifest_fd}"),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            self.channel.close()
            raise
        finally:
            theirs.close()
            os.close(manifest_fd)
        self.pid = self.process.pid
        self._pidfd: int | None = None
        self._pid_gone = False  # (forked, and gone before its pidfd was taken)
        self.channel.setblocking(False)
        loop.add_reader(self.channel, self._read)
        self._timer: Timer | None = loop.call_later(READY_TIMEOUT, self._timed_out)

    def _read(self) -> None:
        try:
            chunk = self.channel.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._loop.remove_reader(self.channel)
            status = self.process.poll() if self.pid == self.process.pid else None
            said = "" if status is None else f" with status {status}"
            self._fail(f"the new supervisor (pid {self.pid}) exited{said} before it was ready")
            return
        self._buffer += chunk
        while b"\n" in self._buffer and not self.done:
            line, _, rest = bytes(self._buffer).partition(b"\n")
            self._buffer = bytearray(rest)
            self._message(line)

    def _message(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if isinstance(message, dict) and message.get("ready") == self.pid:
            self.version = str(message.get("version", "?"))
            self._finish()
            self._on_ready(self)
        elif isinstance(message, dict) and set(message) == {"pid"} and self.pid == self.process.pid:
            self._forked(message["pid"])
        elif isinstance(message, dict) and "error" in message:
            status = message.get("status")
            self._fail(
                str(message["error"]), status if isinstance(status, int) and status > 0 else 1
            )
        else:
            self._fail(f"the new supervisor (pid {self.pid}) said something unexpected")

    def _forked(self, pid: object) -> None:
        if not isinstance(pid, int) or pid <= 1:
            self._fail(f"the new supervisor (pid {self.pid}) said something unexpected")
            return
        self.pid = pid
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pid_gone = True  # (the channel's end of file says so next)
        except (AttributeError, OSError):
            pass  # no pidfds on this kernel: killed by pid

    def _kill(self) -> None:
        """SIGKILL to the new supervisor (its workers see it gone and exit)."""
        with contextlib.suppress(OSError):
            if self.pid == self.process.pid:
                self.process.kill()  # (the bootstrap, our child, has not forked)
            elif self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            elif not self._pid_gone:
                os.kill(self.pid, signal.SIGKILL)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(f"the new supervisor (pid {self.pid}) was not ready within {READY_TIMEOUT:g}s")

    def _finish(self) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(KeyError, ValueError):
            self._loop.remove_reader(self.channel)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _fail(self, reason: str, status: int = os.EX_SOFTWARE) -> None:
        if self.done:
            return
        self._kill()
        self._finish()
        self.channel.close()
        self._on_failed(reason, status)

    def abandon(self) -> None:
        """The old supervisor stops instead: the new one is killed, unless it took over."""
        if not self.done:
            self._kill()
            self._finish()
            self.channel.close()

    def go(self, counters: Mapping[str, Any]) -> None:
        """The old one has let go: the new one may run."""
        self._send({"go": counters})

    def final(self, counters: Mapping[str, Any]) -> None:
        """The old one is done: what it counted after `go` too."""
        self._send({"final": counters})
        self.channel.close()

    def _send(self, message: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.channel.setblocking(True)
            self.channel.settimeout(SEND_TIMEOUT)
            self.channel.sendall(json.dumps(message).encode() + b"\n")

    def reap(self) -> int | None:
        """Its exit status once it has exited (collected here, never by the child table)."""
        return self.process.poll()

    def close_in_child(self) -> None:
        for fd in (self.channel.fileno(), self._pidfd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


# -- the new supervisor ------------------------------------------------------------------


class Takeover:
    """What a new supervisor was handed, and its side of the channel."""

    def __init__(self, channel: socket.socket | None, described: Mapping[str, Any]) -> None:
        self.channel = channel
        self.old: dict[str, Any] = dict(described.get("old") or {})
        self._files: list[tuple[Listener, tuple[int, int]]] = []  # unix socket files made

        def take(entry: Mapping[str, Any]) -> Listener:
            listener = _listener(entry)
            if (created := entry.get("created_file")) is not None:
                self._files.append((listener, (int(created[0]), int(created[1]))))
            return listener

        self.sockets = Sockets(
            {str(name): take(entry) for name, entry in described["servers"].items()},
            [take(entry) for entry in described.get("spare") or []],
        )
        for key in ("metrics", "control"):
            if described.get(key) is not None:
                setattr(self.sockets, key, take(described[key]))
        reply_fd = self.old.get("reply_fd")
        self.reply_fd = reply_fd if isinstance(reply_fd, int) and reply_fd > 2 else None
        pidfile_fd = self.old.get("pidfile_fd")
        self.pidfile_fd = pidfile_fd if isinstance(pidfile_fd, int) and pidfile_fd > 2 else None
        for fd in (self.reply_fd, self.pidfile_fd):
            if fd is not None:
                os.set_inheritable(fd, False)
        self.unused: list[Listener] = []  # handed sockets no server uses now: closed at `go`
        self._buffer = bytearray()
        self._said = False  # ready, or failed
        self.on_gone: Callable[[], None] | None = None  # the old one has drained (or died)

    @property
    def in_place(self) -> bool:
        return self.channel is None

    def ready(self) -> Mapping[str, Any] | None:
        """Say ready and wait until the old supervisor has let go; its counters then, or None
        if it is gone. In place (exec), the counters came with the manifest."""
        if self.channel is None:
            counters: Mapping[str, Any] | None = self.old.get("counters")
            return counters
        self._said = True
        self._send({"ready": os.getpid(), "version": __version__})
        # As long as the old one lives, it says go (or kills this one): a loop held up there
        # by an inline handler only delays it. Taking over before would make two owners.
        self.channel.settimeout(None)
        try:
            message = self._receive()
        except (OSError, ValueError):
            message = None
        if message is None or not isinstance(message.get("go"), dict):
            log.warning("upgrade: the old supervisor is gone before it said go; taking over")
            return None
        return message["go"]  # type: ignore[no-any-return]

    def claim(self) -> None:
        """The old supervisor has let go: the unix socket files it made are this one's to
        remove when it closes them (not before: a new one that fails leaves them be)."""
        for listener, created in self._files:
            listener.created_file = created
        self._files = []

    def failed(self, status: int, line: str) -> None:
        """The new supervisor cannot start: say why (the old one goes on; once ready was said,
        nothing: the old one has let go)."""
        if self._said:
            return
        self._said = True
        self._send({"error": " ".join(line.split()), "status": status})
        self.close()
        if self.reply_fd is not None:  # (in place: the old code is gone, and so is this one)
            self.answer({"ok": False, "message": line, "exit_status": status, "pid": os.getpid()})

    def answer(self, reply: Mapping[str, Any]) -> None:
        """In place: answer the control connection that asked for the upgrade (blocking, as
        the old one would have), then close it."""
        fd, self.reply_fd = self.reply_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError), socket.socket(fileno=fd) as conn:
            conn.settimeout(SEND_TIMEOUT)
            conn.sendall(json.dumps(reply).encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)

    def _send(self, message: Mapping[str, Any]) -> None:
        if self.channel is None:
            return
        with contextlib.suppress(OSError):
            self.channel.sendall(json.dumps(message).encode() + b"\n")

    def _receive(self) -> dict[str, Any] | None:
        """One message (blocking), None at end of file."""
        assert self.channel is not None  # noqa: S101
        while b"\n" not in self._buffer:
            chunk = self.channel.recv(65536)
            if not chunk or len(self._buffer) > MAX_MESSAGE:
                return None
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        message = json.loads(line)
        return message if isinstance(message, dict) else None

    def watch(self, loop: Loop, on_final: Callable[[Mapping[str, Any]], None]) -> None:
        """From the loop: the old supervisor's final counters, once it has drained."""
        channel = self.channel
        if channel is None:
            return

        def read() -> None:
            try:
                chunk = channel.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            self._buffer += chunk
            if chunk and b"\n" not in self._buffer and len(self._buffer) < MAX_MESSAGE:
                return
            loop.remove_reader(channel)
            self.close()
            line = bytes(self._buffer).partition(b"\n")[0]
            with contextlib.suppress(ValueError):
                message = json.loads(line) if line else None
                if isinstance(message, dict) and isinstance(message.get("final"), dict):
                    on_final(message["final"])
            if self.on_gone is not None:
                self.on_gone()

        channel.setblocking(False)
        loop.add_reader(channel, read)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def close_in_child(self) -> None:
        if self.channel is not None:
            os.close(self.channel.fileno())
        if self.reply_fd is not None:  # (a prefork worker forked before the answer)
            os.close(self.reply_fd)


def inherited() -> Takeover | None:
    """What an old supervisor handed this process ($SUPERVISOR_UPGRADE), or None. Raise
    UpgradeError for a value that is not one."""
    value = os.environ.pop(ENV, "")
    if not value:
        return None
    channel_text, _, manifest_text = value.partition(":")
    try:
        manifest_fd = int(manifest_text)
        channel = None if channel_text == "-" else socket.socket(fileno=int(channel_text))
        with os.fdopen(manifest_fd, "rb") as file:
            described = json.loads(file.read(MAX_MESSAGE))
        if channel is not None:
            channel.set_inheritable(False)
        return Takeover(channel, described)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UpgradeError(f"${ENV}: not a handover from a supervisor ({exc})") from exc

"""The fork server: a small process that forks fork-mode requests for the supervisor.

Why: what a fork-per-request child costs is mostly the copy-on-write page faults after fork()
and the teardown at exit, which grow with the size of the forking process, plus what runs in
the child before the handler. The supervisor (its loop, configuration, metrics, logging) is
about 18 MiB; this process is a fresh interpreter started with `-S` (no site hooks: their
imports were 3 MiB here) that imports only the handler modules, and forks from a loop that
touches little between forks. Measured per request (wrk, 8 clients, 2 vCPUs): child about 0.7
ms of CPU and 200 faults, this process 0.45 ms; forked from the supervisor, the child took 1.3
ms and the supervisor 0.9 (README, Performance).

It also skips `threading._after_fork` in its children while it is single-threaded (it never
starts a thread itself; a handler module that started one at import turns this off): that hook
rebuilds the threading module's state for the case where other threads existed at fork(), and
its page faults were 0.3 ms of every child (a bare fork+exit from here: 0.55 ms with it, 0.22
without). The child puts the hook back first thing, so a handler that forks again gets the
standard behaviour.

This file runs as a script (`python -S -P forkserver.py`) and imports only the standard library:
the supervisor package's modules are for the supervisor, but for handling.py, the request path
its children share with the supervisor's own requests (stdlib-only too), which it loads by its
location next to this file: not through sys.path, where handler modules would see the package's
modules as top-level ones, and without the package's __init__. The protocol, on a SOCK_SEQPACKET
socket pair (fd 3 here), each message a marshal'd tuple:

- setup (fd 4, a file): sys.path, the log format (text or JSON) and level, and per server its
  name, handler (`module:Class`) and the attributes its handlers see as `self.server`; or, for
  a hosted server, its `server` callable (`module:callable`): the object is made here, once,
  and adopted as in the supervisor (adoption.py, loaded like handling.py), so that children
  inherit it as ForkingMixIn's do.
- done (fd 5, the write end of a pipe the supervisor reads): a child of a server with
  `max_per_source` writes handling.DONE (this process's pid, the request's seq, its own pid)
  when its handler has returned, before its connection is shut down, so that the supervisor
  stops counting the request for its client before the client can see the answer end.
- supervisor -> here: ("R", [(name, seq, client_address), ...]) with the connections' fds in
  the same order (SCM_RIGHTS: one accept batch); ("K", signum) to signal every live child,
  reported or not; ("T", pid, signum) to signal one child if it is still ours (its request
  ran over request_timeout); ("L",) with a new stderr (log file reopened); ("C",): no more
  requests, exit once the children are done. End of file: the supervisor is gone; the same.
- here -> supervisor, batched per turn as lists of at most 64 KiB: ("serves", name) for each
  server it can fork for, then ("ready", threads_ok); ("failed", name, reason) for a handler
  that cannot be imported here; ("F", seq, pid) forked; ("E", seq, reason, errno) not forked
  (the connection is closed; errno: fork() failed with it, 0: not forked at all); ("X", pid,
  status, utime, stime) a child was reaped; ("Z", pid) a child is gone without a status.

Signals that stop or reload the supervisor are blocked here, with their default actions (a
Ctrl-C or a service manager signals the whole group; SIGINT is ignored, as in the supervisor's
own children): this process ends when the supervisor says so or goes away. Its children
inherit the mask and unblock it once they are ready, so a signal sent to a child just after
fork() is held for it, with no mask changes around each fork.
"""

from __future__ import annotations  # (no typing module at run time: see below)

import _signal  # type: ignore[import-not-found]  # `signal` without its enum conversions
import array
import errno
import gc
import importlib
import marshal
import os
import select
import socket
import socketserver
import sys
from functools import partial

MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)  # (Linux)
TYPE_CHECKING = False  # `typing` (and the `re` it imports) is a megabyte of this small process
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from typing import Any, NoReturn


def _load_sibling(name: str) -> Any:
    """Load supervisor/<name>.py by its location, for this file run as a script: under `-P` its
    directory is not on sys.path, and must not be (handler modules would find the package's
    modules there as top-level ones). Named as in the package, but not put in sys.modules: a
    handler module that imports the supervisor package gets the package's own."""
    import types  # noqa: PLC0415 (imported already, by enum)
    from importlib.machinery import SourceFileLoader  # noqa: PLC0415 (only as a script)

    path = os.path.join(os.path.dirname(__file__), f"{name}.py")
    loader = SourceFileLoader(f"supervisor.{name}", path)  # (its bytecode cache too)
    module = types.ModuleType(loader.name)
    module.__file__, module.__loader__ = path, loader
    loader.exec_module(module)
    return module


if TYPE_CHECKING or __package__:  # imported by the supervisor, as supervisor.forkserver
    from supervisor import adoption, handling
else:  # run as a script: handling.py, next to this file, by its location (see _load_sibling)
    handling = _load_sibling("handling")
    adoption = None  # (loaded only if a server is hosted: see load)

CHANNEL_FD = 3
SETUP_FD = 4
DONE_FD = 5
# Blocked here for good: see the module docstring. SIGINT is also ignored, as in the
# supervisor's own children: a Ctrl-C to the group lets the supervisor drain the requests.
HELD = (
    _signal.SIGINT,
    _signal.SIGTERM,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
)
REQUEST_SIZE = 16384  # a request message: per connection a server name and a client address
REQUEST_FDS = 64  # the most connections one request message carries
REPORT_SIZE = 65536  # the most a report message may take (the supervisor reads this much)
WARM_UP_RUNS = 16  # CPython 3.11 specialises a function's code after 8 calls
REPORT_BATCH = 256  # records per report message, fewer if they would not fit
REASON_LIMIT = 1000  # characters of an import error's reason
GONE_ERRNOS = (errno.EPIPE, errno.ECONNRESET)  # the supervisor is gone
CHANNEL_RETRIES = 100  # channel errors in a row (ENOBUFS, ENOMEM) before giving up on it
RETRY_MS = 10  # how soon reports that could not be sent are tried again


class ServerView:
    """What a handler sees as `self.server` in a child: socketserver.BaseServer's attributes.
    The listening socket is not in this process: `socket` is a closed socket of its family and
    type, as the supervisor's own children see theirs (they close it before the handler)."""

    def __init__(
        self, spec: dict[str, Any], handler: type, log_setup: LogSetup, hosted: Any = None
    ) -> None:
        self.name: str = spec["name"]
        self.handler_spec: str = spec["handler"]
        self.log_setup = log_setup
        self.RequestHandlerClass = handler
        self.hosted = hosted  # the hosted server object (`server =`): handlers see it instead
        self.reports_errors: bool = spec.get("reports_errors", False)
        self.server_address = spec["server_address"]
        self.address_family = socket.AddressFamily(spec["family"])
        self.socket_type = socket.SocketKind(spec["type"])
        self.proto: int = spec["proto"]
        self.max_packet_size: int = spec["max_packet_size"]
        # Limits and user for each child (privileges.child_setup); None: none, the common case.
        self.child_setup: Any = spec.get("child_setup")
        self.report_done: bool = spec.get("report_done", False)  # (max_per_source: see "done")
        self.timeout: float | None = None
        self.socket_timeout: float | None = None  # (request_timeout: the supervisor kills)
        if "server_port" in spec:  # an IP server: as http.server.HTTPServer sets them (here,
            # once, not in the supervisor's loop, which a slow resolver would hold)
            self.server_name: str = socket.getfqdn(self.server_address[0])
            self.server_port: int = spec["server_port"]
        self.socket = socket.socket(self.address_family, self.socket_type, self.proto)
        self.socket.close()

    def fileno(self) -> int:
        return self.socket.fileno()

    def server_close(self) -> None:
        self.socket.close()

    def shutdown(self) -> None:
        """Nothing to stop here: serving is the supervisor's (as server.py's Server)."""

    def close_hosted(self) -> None:
        """The hosted object's server_close(), as the fork server exits; what it raises is
        logged (`handling.close_hosted`)."""
        if self.hosted is not None:
            handling.close_hosted(self.hosted, _view_logger(self))

    def handle_error(self, request: Any, client_address: Any) -> None:
        handling.handle_error(self, client_address, _view_logger)

    def shutdown_request(self, request: socket.socket) -> None:
        handling.shutdown_request(request)

    def close_request(self, request: socket.socket) -> None:
        request.close()


# The text format, the level, the journal's pid or 0, JSON lines (log_format = "json")
LogSetup = tuple[str, str, int, bool]


def log_setup_of(setup: dict[str, Any]) -> LogSetup:
    """What the supervisor's setup says of logging (forking.setup_for)."""
    json = setup.get("log_json", False)
    return (setup["log_format"], setup["log_level"], setup["journal_pid"], json)


def _configure_logging(log_setup: LogSetup, force: bool = False) -> None:
    """Log as the supervisor does (format, level, stderr; the journal's format or JSON lines
    when the supervisor uses them, with the server and client of the request being handled:
    logs.RequestFields). `force`: also when something configured the root logger already (a
    handler module's logging.basicConfig(), which in the supervisor, configured first, does
    nothing)."""
    import logging  # noqa: PLC0415 (only where a line is logged: the process stays small)

    root = logging.getLogger()
    if root.handlers and not force:
        return
    handler = logging.StreamHandler(sys.stderr)
    text_format, level, journal_pid, json = log_setup
    if journal_pid or json:
        logs = importlib.import_module("supervisor.logs") if __package__ else _load_sibling("logs")
        handler.setFormatter(logs.formatter(json, journal_pid))
        handler.addFilter(logs.RequestFields(handling.REQUEST))  # (this file's handling.py)
        logs.python_output_logged(json)
    else:
        handler.setFormatter(logging.Formatter(text_format))
    root.handlers[:] = [handler]
    root.setLevel(level)


def _logger(log_setup: LogSetup) -> logging.Logger:
    _configure_logging(log_setup)
    import logging  # noqa: PLC0415

    return logging.getLogger("supervisor")


def _view_logger(server: ServerView) -> logging.Logger:
    """The request path's logger for a server here (handling.handle: only for a line)."""
    return _logger(server.log_setup)


def apply_child_setup(setup: Any) -> None:
    """In a new child, before its handler: resource limits (soft and hard), niceness, then its
    server's user with no supplementary groups (last: the others may need root). `setup` is
    privileges.child_setup's; the supervisor's own children use this function too. Raises
    OSError or ValueError."""
    rlimits, nice, ids = setup
    if rlimits:
        import resource  # noqa: PLC0415 (imported by load() already when any server needs it)

        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))
    if nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if ids is not None:
        os.setgroups([])
        os.setgid(ids[1])
        os.setuid(ids[0])


def set_up_child(name: str, setup: Any, log: Any) -> bool:
    """apply_child_setup, or one line through `log` (a logger, got only then) and False: the
    handler must not run."""
    try:
        apply_child_setup(setup)
    except (OSError, ValueError) as exc:
        log().error(
            "%s: child %d cannot apply its limits or user (%s); not running the handler",
            name,
            os.getpid(),
            getattr(exc, "strerror", None) or exc,
            extra={"server": name},  # (logs.about: not imported here)
        )
        return False
    return True


def _handle(
    server: ServerView, fd: int, client_address: Any, done: Callable[[], object] | None = None
) -> int:
    """Run the handler on the connection (handling.handle, as the supervisor's own requests);
    the exit status (0 ok, 1 failed). `done`: called when the handler has returned."""
    request = socket.socket(server.address_family, server.socket_type, server.proto, fileno=fd)
    return 0 if handling.handle(server, request, client_address, _view_logger, done) else 1


class ForkServer:
    """The loop: requests in, forks, exits out.

    States: ACCEPTING -> DRAINING (the supervisor said "C", or its end closed, or a send to it
    failed: no more requests; the children finish, their exits are still reported if the
    supervisor listens) -> exit when no child is left. If the channel fails, it is closed, so
    that the supervisor sees end of file and replaces this process."""

    def __init__(self, servers: dict[str, ServerView], log_setup: LogSetup) -> None:
        self.servers = servers
        self.log_setup = log_setup
        self.channel = socket.socket(fileno=CHANNEL_FD)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.children: set[int] = set()
        self.out: list[tuple[Any, ...]] = []
        self.accepting = True  # the supervisor may still send requests
        self.listening = True  # the channel is open: commands come, reports go
        self.hook: Any = None  # threading._after_fork and its code, while skipped
        self.hook_code: Any = None
        self.poller = select.poll()
        self.failures = 0  # channel errors in a row (see failed_again)

    def skip_threading_hook(self) -> bool:
        """Skip threading's after-fork hook in children if this process is single-threaded;
        False if a handler module started a thread (the hook is then needed)."""
        threading = sys.modules.get("threading")
        if threading is None:
            return True
        if threading.active_count() != 1:
            return False
        self.hook = threading._after_fork
        self.hook_code = self.hook.__code__
        self.hook.__code__ = _nothing.__code__
        return True

    def run(self) -> None:
        _signal.signal(_signal.SIGCHLD, _nothing_signal)
        _signal.siginterrupt(_signal.SIGCHLD, False)
        _signal.set_wakeup_fd(self.wake_w)
        self.poller.register(CHANNEL_FD, select.POLLIN)
        self.poller.register(self.wake_r, select.POLLIN)
        while self.accepting or self.children:
            for fd, _ in self.poller.poll(RETRY_MS if self.out else None):
                if fd == self.wake_r:
                    self.reap()
                elif self.listening:
                    self.receive()
            self.flush()

    def hang_up(self) -> None:
        """The channel is done (end of file, the supervisor gone, or it kept failing): no more
        requests or reports. Closed at once: a supervisor still there sees end of file and
        counts what we had as no longer tracked (and replaces us)."""
        self.accepting = False
        if self.listening:
            self.listening = False
            self.poller.unregister(CHANNEL_FD)
            self.channel.close()

    def receive(self) -> None:
        fds = array.array("i")
        try:
            # MSG_CMSG_CLOEXEC: the connections are close-on-exec, as accept4() made them in
            # the supervisor (a handler's exec'd program must not inherit them).
            message, ancillary, flags, _ = self.channel.recvmsg(
                REQUEST_SIZE, socket.CMSG_SPACE(REQUEST_FDS * fds.itemsize), MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno not in GONE_ERRNOS and self.failed_again():
                return  # (a passing shortage, ENOBUFS say: the next turn tries again)
            message, ancillary, flags = b"", [], 0
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if not message or flags & socket.MSG_TRUNC:
            for fd in fds:
                os.close(fd)
            self.hang_up()  # the supervisor is gone, or the channel is broken
            return
        command = marshal.loads(message)  # noqa: S302 (from the supervisor, a socket pair)
        if command[0] == "R":
            self.fork_all(command[1], list(fds))
        elif command[0] == "C":
            self.accepting = False  # DRAINING
        elif command[0] == "K":
            self.signal_children(command[1])
        elif command[0] == "T" and command[1] in self.children:  # (not reaped: still ours)
            os.kill(command[1], command[2])
        elif command[0] == "L" and fds:
            os.dup2(fds[0], 1)
            os.dup2(fds[0], 2)
            os.close(fds[0])

    def fork_all(self, requests: list[tuple[str, int, Any]], fds: list[int]) -> None:
        """Fork a child for each request; each child closes the others' connections."""
        for index, (name, seq, client_address) in enumerate(requests):
            if index >= len(fds) or not self.accepting or name not in self.servers:
                self.out.append(("E", seq, "not forked by the fork server", 0))
                if index < len(fds):
                    os.close(fds[index])
                continue
            self.fork(self.servers[name], seq, client_address, fds[index], fds[index + 1 :])
        for fd in fds[len(requests) :]:
            os.close(fd)

    def fork(
        self, server: ServerView, seq: int, client_address: Any, fd: int, others: list[int]
    ) -> None:
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fd)
            self.out.append(("E", seq, exc.strerror or str(exc), exc.errno or -1))
            return
        if pid == 0:
            self.child(server, seq, fd, client_address, others)
        os.close(fd)
        self.children.add(pid)
        self.out.append(("F", seq, pid))

    def child(
        self, server: ServerView, seq: int, fd: int, client_address: Any, others: list[int]
    ) -> NoReturn:
        status = 1
        try:
            if self.hook is not None:
                self.hook.__code__ = self.hook_code
            gc.enable()
            # Every call here is paid by every request, in page faults. The wake-up pipe stays
            # open (close-on-exec): the signal module still names it, and only a signal with a
            # Python handler (none, unless the handler sets one) writes to it.
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            os.close(CHANNEL_FD)
            for other in others:  # the rest of this batch's connections
                os.close(other)
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, HELD)  # (what was sent to it arrives)
            if server.child_setup is None or set_up_child(
                server.name, server.child_setup, lambda: _logger(self.log_setup)
            ):
                done = (
                    partial(handling.write_done, DONE_FD, os.getppid(), seq)  # (see "done")
                    if server.report_done
                    else None
                )
                status = _handle(server, fd, client_address, done)
        except BaseException:
            _logger(self.log_setup).exception(
                "%s: child %d failed outside its handler",
                server.name,
                os.getpid(),
                extra={"server": server.name, "client": client_address},
            )
        finally:
            handling.flush_output()
            os._exit(status)

    def signal_children(self, signum: int) -> None:
        """Signal every live child, reported or not."""
        for pid in self.children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                continue

    def reap(self) -> None:
        try:  # noqa: SIM105 (one read, no suppress object: this runs for every exit)
            os.read(self.wake_r, 4096)  # (poll says there is something)
        except (BlockingIOError, InterruptedError):
            pass
        while self.children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:  # (cannot happen: they are ours) say they are gone
                self.out.extend(("Z", pid) for pid in self.children)
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.out.append(("X", pid, status, usage.ru_utime, usage.ru_stime))

    def flush(self) -> None:
        """Send what this turn has to report, in one message (or a few)."""
        if not self.out:
            return
        if not self.listening:
            self.out.clear()
            return  # nobody is listening any more
        while self.out:
            count = min(len(self.out), REPORT_BATCH)
            message = marshal.dumps(self.out[:count])
            while len(message) > REPORT_SIZE and count > 1:  # (records are bounded in size)
                count //= 2
                message = marshal.dumps(self.out[:count])
            try:
                self.channel.send(message)  # (a datagram: all of it, or an error)
            except OSError as exc:
                if exc.errno not in GONE_ERRNOS and self.failed_again():
                    return  # kept, for the next turn (poll wakes again soon: see run)
                self.hang_up()  # the supervisor is gone, or the channel keeps failing
                return
            del self.out[:count]  # (only what went: nothing is reported twice)
        self.failures = 0

    def failed_again(self) -> bool:
        """Count a channel error that may pass; False once there were too many in a row."""
        self.failures += 1
        return self.failures < CHANNEL_RETRIES


def _nothing() -> None:
    return None


def _nothing_signal(signum: int, frame: object) -> None:
    return None


def _import(module_name: str, locations: dict[str, tuple[str, list[str] | None]]) -> Any:
    """Import a handler module; if sys.path does not have its top-level package, load that
    from where the supervisor found it (its site hooks put it there: an editable install)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.partition(".")[0]
        if exc.name != top or top not in locations:
            raise
    _load_by_location(top, *locations[top])
    return importlib.import_module(module_name)


def _load_by_location(name: str, origin: str, search: list[str] | None) -> None:
    import importlib.util  # noqa: PLC0415 (only for such packages)

    spec = importlib.util.spec_from_file_location(name, origin, submodule_search_locations=search)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def load(setup: dict[str, Any]) -> tuple[dict[str, ServerView], dict[str, str]]:
    """Import the handlers; the servers that can run here and the reasons for those that
    cannot (the supervisor forks those itself)."""
    log_setup = log_setup_of(setup)
    sys.path[:] = setup["path"]
    sys.argv[:] = setup["argv"]  # (what handlers see: the supervisor's command line)
    servers: dict[str, ServerView] = {}
    failed: dict[str, str] = {}
    if any(spec.get("child_setup") for spec in setup["servers"]):
        import resource  # noqa: F401, PLC0415 (here, once: not in every child; only if needed)
    for spec in setup["servers"]:
        try:
            servers[spec["name"]] = _view(spec, setup["locations"], log_setup)
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            failed[spec["name"]] = reason[:REASON_LIMIT]
    if "logging" in sys.modules:  # handler modules log: as the supervisor's children would
        _configure_logging(log_setup, force=True)
    return servers, failed


def _view(
    spec: dict[str, Any], locations: dict[str, tuple[str, list[str] | None]], log_setup: Any
) -> ServerView:
    """A server's view here: its handler class imported, or its object made and adopted."""
    module_name, _, attribute = spec.get("server", spec["handler"]).partition(":")
    found: Any = _import(module_name, locations)
    for part in attribute.split("."):
        found = getattr(found, part)
    if "server" not in spec:
        return ServerView(spec, found, log_setup)
    global adoption  # noqa: PLW0603 (loaded once, on first use)
    if adoption is None:
        adoption = _load_sibling("adoption")
    hosted = found()
    family, kind, proto = spec["family"], spec["type"], spec["proto"]
    adoption.adopt(hosted, spec["server_address"], family, kind, proto)
    return ServerView(spec, hosted.RequestHandlerClass, log_setup, hosted)


def main() -> None:
    # (the supervisor starts us with HELD blocked already: nothing arrives before this)
    for signum in HELD:
        _signal.signal(signum, _signal.SIG_DFL)
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _signal.pthread_sigmask(_signal.SIG_BLOCK, HELD)
    os.closerange(DONE_FD + 1, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
    os.set_inheritable(DONE_FD, False)  # (dup2 cleared close-on-exec: a handler's exec must not)
    with open(SETUP_FD, "rb") as setup_file:
        setup = marshal.loads(setup_file.read())  # noqa: S302 (the supervisor's)
    servers, failed = load(setup)
    handling.flush_output()  # what the imports printed, once: not again from every child
    server = ForkServer(servers, log_setup_of(setup))
    threads_ok = server.skip_threading_hook()
    server.out.extend(("failed", name, reason) for name, reason in failed.items())
    server.out.extend(("serves", name) for name in servers)
    server.out.append(("ready", threads_ok))
    server.flush()
    warm_up()
    # What the imports built is out of the collector's reach (a child's collections would
    # copy those pages), and this loop collects nothing: it makes no reference cycles. Each
    # child turns collection back on for its handler.
    gc.freeze()
    gc.disable()
    server.run()
    for view in servers.values():  # hosted objects made here: let them release what they hold
        view.close_hosted()


class _Idle(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        return None


def warm_up() -> None:
    """Run the request path (_handle, handling.handle: socket, request handler set-up and
    finish, shut-down) on a local socket pair until the interpreter has specialised its code:
    children then run that code without writing into it, which would copy its pages. No
    handler code runs here."""
    view = ServerView(
        {
            "name": "warm-up",
            "handler": "",
            "server_address": "",
            "family": socket.AF_UNIX,
            "type": socket.SOCK_STREAM,
            "proto": 0,
            "max_packet_size": 0,
        },
        _Idle,
        ("%(message)s", "INFO", 0, False),
    )
    for _ in range(WARM_UP_RUNS):
        ours, theirs = socket.socketpair()
        with theirs:
            _handle(view, ours.detach(), "")


if __name__ == "__main__":
    main()

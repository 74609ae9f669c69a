"""One hosted server: its listening socket, handler class, mode and limits.

For a `handler =` table, a `Server` is what a handler sees as `self.server`: it has the
attributes of a `socketserver.BaseServer` that handlers use (`server_address`, `socket`,
`RequestHandlerClass`, `address_family`, `socket_type`, `timeout`, `fileno()`, `handle_error()`;
`server_name` (`socket.getfqdn(host)`) and `server_port` for IP servers, as
`http.server.HTTPServer`), so handlers written for the standard library run unchanged. For a
`server =` table, handlers see the hosted object instead (`hosted`, hosting.py), and its hooks
run where socketserver calls them: `verify_request` (`verify`), `finish_request`,
`handle_error` and `shutdown_request` (handling.py), `service_actions` (`service`). Running a
request (`handle`) never lets a handler's exception escape: it is handling.py's request path,
the one the fork server's children run too.

The listening socket is the supervisor's alone: the parent reads through `listener.socket`
only, and handlers never get it. A stream server's `socket`, as handlers see it, is a closed
socket of the same kind (as in a forked child), and `server_close()` / `shutdown()` from a
handler change nothing. A datagram handler gets a blocking duplicate (`socket`, in
`self.request` as in socketserver; a hosted object has one of its own): whatever a handler does
to it (`settimeout`, `setblocking`, `close`) cannot make the parent's reads block, since those
use `MSG_DONTWAIT`.
"""

import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

from supervisor import adoption, handling, hosting, logs, privileges
from supervisor.config import Mode, ServerConfig
from supervisor.guards import Guard, RejectionLog, Source, peer_credentials
from supervisor.hosting import Code
from supervisor.loop import Timer
from supervisor.sockets import Listener
from supervisor.stats import ServerStats

log = logging.getLogger("supervisor")

Request = socket.socket | tuple[bytes, socket.socket]


def _logger(server: "Server") -> logging.Logger:
    """The request path's logger (handling.handle): the supervisor's."""
    return log


class Server:
    """A server hosted by the supervisor, shaped like a socketserver server."""

    def __init__(self, config: ServerConfig, code: Code, listener: Listener) -> None:
        self.name = config.name
        self.sources: Counter[Source] = Counter()  # requests running per source (guards.py)
        self.guard: Guard | None = None
        self.code = code
        self.hosted: Any = None  # the hosted socketserver server (`server =`), or None
        # Hosted objects replaced by a reload, with the socket each was handed (a datagram
        # server's dup of the listener, closed here whatever its server_close() does).
        self._retired_code: list[tuple[Code, socket.socket | None]] = []
        self._handed: socket.socket | None = None  # the current hosted object's
        self._use(config, code)
        self.timeout: float | None = None
        self.active = 0  # live children (fork) or busy threads (thread)
        self.threads = 0  # busy threads: they may be answering on a datagram handler socket
        self.listening = False  # registered in the selector
        self.resume: Timer | None = None  # paused (out of descriptors, processes...) until then
        self.start_pause = 0.0  # the next pause after a fork or thread failed (0: the first)
        self.start_failures = 0  # requests that could not be started during this pause
        self.retired = False  # removed by a reload: draining its last requests
        self.stats = ServerStats()
        self._old_sockets: list[socket.socket] = []  # handler sockets of replaced listeners
        self.listener = listener
        self.socket = self._attach(listener)
        self._host(code)

    def _use(self, config: ServerConfig, code: Code) -> None:
        """Take a configuration and its code. `mode` is an attribute, not a property: it is
        read several times a request."""
        self.config = config
        handler = code.handler
        self.RequestHandlerClass = handler
        # (`module:Class`, for the request path's log)
        self.handler_spec = config.handler or f"{handler.__module__}:{handler.__qualname__}"
        # The hosted object's hooks that run (handling.py, admission.py, core.py); False for
        # a `handler =` server.
        self.verifies = code.verifies
        self.reports_errors = code.reports_errors
        self.services = code.services
        self.max_packet_size = config.max_packet_size
        self.mode = config.mode
        limits = config.limits
        if not limits.guarded:
            self.guard = None
        elif self.guard is None or not self.guard.same(limits, config.address.is_unix):
            # (else the buckets stay: a reload that changes, say, banner_fail must not hand
            # every client a fresh burst)
            self.guard = Guard(limits, config.address.is_unix, self.sources)
        banner = limits.banner_fail
        if banner is not None and not banner.endswith("\n"):
            banner += "\r\n"
        self.banner = None if banner is None else banner.encode()
        # Without a child to kill (thread, inline, a prefork worker's many requests), the
        # request_timeout is a timeout on the connection's socket operations.
        timeout = limits.request_timeout
        self.socket_timeout = timeout if timeout and config.mode is not Mode.FORK else None
        # What each child applies before its handler (limits, user); None, usually: nothing.
        self.child_setup = privileges.child_setup(config)

    def _attach(self, listener: Listener) -> socket.socket:
        """Take `listener`; return the socket handlers see: a closed one of its kind for a
        stream server, a blocking dup for datagrams (see the module docstring)."""
        self.listener = listener
        sock = listener.socket
        self.address_family = sock.family
        self.socket_type = sock.type
        self.server_address: Any = sock.getsockname()
        self._fqdn: str | None = None
        if not listener.address.is_unix:
            self.server_port = listener.bound.port
        if listener.address.is_stream:
            return adoption.stand_in(sock.family, sock.type, sock.proto)
        return sock.dup()

    @property
    def server_name(self) -> str:
        """As http.server.HTTPServer sets it: socket.getfqdn() of the bound host (once)."""
        if self.listener.address.is_unix:
            raise AttributeError("server_name")  # (HTTPServer has none for a unix socket)
        if self._fqdn is None:
            self._fqdn = socket.getfqdn(self.server_address[0])
        return self._fqdn

    def _host(self, code: Code) -> None:
        """Take the hosted object of `code`, if it is a new one: give it its socket (its own
        dup, for a datagram server); the one it replaces is closed once no thread runs it."""
        if code.hosted is self.hosted:
            self.code = code
            return
        if self.hosted is not None:
            self._retired_code.append((self.code, self._handed))
        self.code, self.hosted, self._handed = code, code.hosted, None
        if code.hosted is not None and not self.listener.address.is_stream:
            self._handed = self.listener.socket.dup()
            code.hosted.socket = self._handed  # type: ignore[attr-defined]  # (its own dup)

    def reconfigure(self, config: ServerConfig, code: Code, listener: Listener) -> None:
        """Apply a new configuration; requests already running keep what they have."""
        self._use(config, code)
        if listener is not self.listener:
            if self.socket is not self.listener.socket:
                self._old_sockets.append(self.socket)  # a thread may still be answering on it
            self.socket = self._attach(listener)
        self._host(code)
        if config.address.is_stream and not listener.inherited:
            listener.socket.listen(config.backlog)  # the backlog may have changed
            # (an inherited socket keeps the Backlog= its service manager gave it)

    @property
    def old_sockets(self) -> list[socket.socket]:
        """Handler sockets of replaced listeners, still open (see close_old_sockets)."""
        return self._old_sockets

    def close_old_sockets(self) -> None:
        """Close the handler sockets of replaced listeners, and let replaced hosted objects
        close, once no thread can be using them (forked children have their own copies)."""
        if not self.threads:
            for old in self._old_sockets:
                old.close()
            self._old_sockets.clear()
            self._close_retired()

    def _close_retired(self) -> None:
        for code, handed in self._retired_code:
            hosting.close(code)
            if handed is not None:
                handed.close()
        self._retired_code.clear()

    def __repr__(self) -> str:
        return f"<Server {self.name} {self.listener.bound}>"

    @property
    def backoff(self) -> bool:
        """Paused: see admission.py."""
        return self.resume is not None

    @property
    def up(self) -> bool:
        """Accepting requests, or only waiting for a child to finish (not failing to accept)."""
        return not self.backoff and not self.retired

    def fileno(self) -> int:
        return self.socket.fileno()

    def get_request(self) -> tuple[Request, Any]:
        """Accept a connection or receive a datagram (raises BlockingIOError when none)."""
        if self.config.address.is_stream:
            return self.listener.socket.accept()
        data, client_address = self.listener.socket.recvfrom(
            self.config.max_packet_size, socket.MSG_DONTWAIT
        )
        if self.socket.fileno() < 0:  # a handler closed it: the next ones need one
            self.socket = self.listener.socket.dup()
        return (data, self.socket), client_address

    def accept_fd(self) -> tuple[int, Any]:
        """Accept a connection as a bare file descriptor (fork mode: the parent only passes it
        on; `socket_for` makes the socket object in the child)."""
        # socket.accept() is _accept() plus a socket object, with enum conversions on the way.
        fd: int
        fd, address = self.listener.socket._accept()  # type: ignore[attr-defined]
        return fd, address

    def socket_for(self, fd: int) -> socket.socket:
        """A socket object for a connection accepted with accept_fd (the family and type as
        _attach stored them: the socket's own properties convert to enums on every read)."""
        proto = self.listener.socket.proto
        return socket.socket(self.address_family, self.socket_type, proto, fileno=fd)

    def handle(
        self, request: Request, client_address: Any, done: Callable[[], None] | None = None
    ) -> bool:
        """Run the handler on one request, then shut the request down; True if it succeeded.
        `done` is called once the handler has returned (or raised), before the connection is
        shut down: a client that waits for the end of its answer sees it only afterwards."""
        return handling.handle(self, request, client_address, _logger, done)

    def shutdown_request(self, request: Request) -> None:
        """Like socketserver: half-close a connection before closing it; datagrams need nothing."""
        handling.shutdown_request(request)

    def admit(
        self,
        request: Request | int,
        client_address: Any,
        rejections: RejectionLog,
        catch_up: Callable[[], None] | None = None,
    ) -> tuple[str | None, Source]:
        """Ask the guard (there must be one) whether the request may run: (None, source), the
        source counted until guards.release; or (reason, source), the client turned away
        (counted, logged). `catch_up` takes note of requests that have ended, before a
        client is turned away for max_per_source (the check has no side effect: it is asked
        again)."""
        guard = self.guard
        assert guard is not None  # noqa: S101 (the caller checked)
        peer = None
        if guard.needs_peer and not isinstance(request, tuple):
            peer = peer_credentials(request)
        reason, source = guard.admit(client_address, peer)
        if reason == "per_source" and catch_up is not None:
            catch_up()
            reason, source = guard.admit(client_address, peer)
        if reason is not None:
            self.stats.rejected[reason] += 1
            rejections.rejected(self.name, reason, client_address, peer)
            self.turn_away(request)
        return reason, source

    def turn_away(self, request: Request | int) -> None:
        """Close a rejected connection, after the banner_fail line if there is one: sent only
        if it fits in the socket's buffer now (a rejected client is never waited for)."""
        if self.banner is None or isinstance(request, tuple):
            self.close_request(request)
            return
        sock = self.socket_for(request) if isinstance(request, int) else request
        try:
            sock.send(self.banner, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            log.debug("%s: banner_fail not sent (%s)", self.name, exc, extra=logs.about(self.name))
        sock.close()

    def close_request(self, request: Request | int) -> None:
        if isinstance(request, int):
            os.close(request)
        elif isinstance(request, socket.socket):
            request.close()

    def verify(self, request: Request | int, client_address: Any) -> bool:
        """Ask the hosted object's verify_request (the caller checked `verifies`; such a
        server's connections are never bare descriptors); a refusal, or an exception (logged),
        is counted, and the request shut down its way."""
        assert not isinstance(request, int)  # noqa: S101 (see modes/fork.py: bare)
        try:
            if self.hosted.verify_request(request, client_address):
                return True
        except BaseException:  # (its SystemExit must not end the supervisor: a refusal)
            log.exception(
                "%s: verify_request failed for client %s",
                self.name,
                client_address,
                extra=logs.about(self.name, client_address),
            )
        self.stats.rejected["verify_request"] += 1
        handling.shutdown_hosted(self, request, _logger)
        return False

    def service(self) -> None:
        """Run the hosted object's service_actions (the caller checked `services`); what it
        raises is logged, once until it succeeds again."""
        try:
            self.hosted.service_actions()
        except BaseException:  # (its SystemExit must not end the supervisor)
            if not self.service_failing:
                log.exception("%s: service_actions failed", self.name, extra=logs.about(self.name))
            self.service_failing = True
        else:
            self.service_failing = False

    service_failing = False
    _hosted_closed = False

    def handle_error(self, request: Request, client_address: Any) -> None:
        """socketserver's hook, for handlers that call it: log the current exception."""
        handling.handle_error(self, client_address, _logger)

    def server_close(self) -> None:
        """socketserver's, for a handler that calls it: nothing (the listening socket is the
        supervisor's; a reload or stop closes it)."""

    def shutdown(self) -> None:
        """socketserver's, for a handler that calls it: nothing (no serve_forever to stop;
        `supervisor stop` or a reload that removes the server stops it)."""

    def close_handler_socket(self) -> None:
        """Close the datagram handlers' duplicate of the listening socket, and older ones, and
        let the hosted object close (when no thread can be using them any more)."""
        self.socket.close()
        for old in self._old_sockets:
            old.close()
        self._old_sockets.clear()
        self._close_retired()
        if self.hosted is not None and not self._hosted_closed:
            self._hosted_closed = True
            hosting.close(self.code)
            if self._handed is not None:
                self._handed.close()  # (its dup, if its server_close() did not close it)

    def close_in_child(self, keep_listener: bool) -> None:
        """In a forked child serving this server: close the parent's sockets of it (the
        listener too, unless a prefork worker accepts on it), through the socket objects, so
        that a handler's `server_close()` finds them closed; never remove the parent's file."""
        self.listener.created_file = None
        if not keep_listener:
            self.listener.socket.close()
        for old in self._old_sockets:
            old.close()

    def own_descriptors(self) -> set[int]:
        """The descriptors `close_in_child` takes care of, with the handler sockets it keeps."""
        sockets = [self.listener.socket, self.socket, *self._old_sockets]
        sockets += [handed for _, handed in self._retired_code if handed is not None]
        if self._handed is not None:
            sockets.append(self._handed)
        return {sock.fileno() for sock in sockets} - {-1}

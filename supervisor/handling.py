"""The one request path: run a server's handler on a request, report it done, shut it down.

The supervisor (`server.Server`: inline, thread and prefork requests, and the children it
forks) and the fork server's children (`forkserver.ServerView`) run a request through
`handle`, so the handler is built, its failures logged, its end reported and its connection
shut down the same way everywhere. Invariants:

- a handler's exception never escapes `handle`: a lost connection (or a request_timeout) is one
  warning line, anything else one error with its traceback; the result says which;
- `done` runs once the handler has returned or raised, before the connection is shut down: a
  client that waits for the end of its answer is only answered afterwards (finished.py);
- the connection is half-closed (SHUT_WR) then closed, as socketserver's `shutdown_request`
  does; a datagram request, `(data, socket)`, has nothing to shut down;
- while it runs, `REQUEST` is (server name, client address) in its thread (a context variable:
  each thread of thread mode has its own), so that every line logged meanwhile, a handler's own
  included, can say which server and client it is about (logs.RequestFields).

This module imports only the standard library, and at run time nothing the fork server has not
imported already: the fork server runs it under `python -S`, loaded by its location (see
forkserver.py), and every import here would cost each of its children page faults. So: no
`typing` (annotations are strings; types come under TYPE_CHECKING), no `logging` (the caller
passes a function that returns the logger, called only when a line is logged), and no new object
per request (no `contextlib.suppress`, no closures) but REQUEST's tuple and token: contextvars
is two small modules, once in the fork server, and setting and resetting it takes 0.2 us.
"""

from __future__ import annotations  # (no typing module at run time: see above)

import contextvars
import os
import socket
import struct
import sys

TYPE_CHECKING = False  # `typing` is a megabyte of the fork server: forkserver.py
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from typing import Any, Protocol, TypeVar

    Request = socket.socket | tuple[bytes, socket.socket]

    class Hosted(Protocol):
        """What the request path reads of a server (server.Server, forkserver.ServerView)."""

        @property
        def name(self) -> str: ...
        @property
        def handler_spec(self) -> str: ...  # `module:Class`, for the log
        @property
        def RequestHandlerClass(self) -> Callable[[Any, Any, Any], object]: ...  # noqa: N802
        @property
        def socket_timeout(self) -> float | None: ...  # request_timeout on the socket, or None
        @property
        def hosted(self) -> Any: ...  # the hosted socketserver server (`server =`), or None
        @property
        def reports_errors(self) -> bool: ...  # the hosted object's class has a handle_error

    ServerT = TypeVar("ServerT", bound=Hosted)

# A request's handler has returned: (the forking process's pid, or 0 for the supervisor; the
# fork server's seq for the request, or 0; the child's pid). Written whole to a pipe (< PIPE_BUF).
DONE = struct.Struct("=iqi")
# The request being handled in this thread: (server name, client address), or None.
REQUEST: contextvars.ContextVar[tuple[str, Any] | None] = contextvars.ContextVar(
    "supervisor_request", default=None
)


def handle(
    server: ServerT,
    request: Request,
    client_address: Any,
    logger: Callable[[ServerT], logging.Logger],
    done: Callable[[], object] | None = None,
) -> bool:
    """Run the server's handler on one request, then shut the request down; True if the
    handler returned. `logger(server)` gives the logger, only for a line to log; `done` is
    called once the handler has returned (or raised), before the connection is shut down.

    A hosted server's own hooks run as socketserver's `process_request` runs them: its
    `finish_request` makes the handler, its `handle_error` (if its class has one) is called
    for an exception, after the supervisor's own line, and its `shutdown_request` ends it."""
    hosted = server.hosted
    token = REQUEST.set((server.name, client_address))
    try:
        timeout = server.socket_timeout
        if timeout is not None and isinstance(request, socket.socket):
            request.settimeout(timeout)
        if hosted is None:
            # A duck-typed socketserver.BaseServer: the attributes handlers use, no serve loop.
            server.RequestHandlerClass(request, client_address, server)
        else:
            hosted.finish_request(request, client_address)
    except (ConnectionError, TimeoutError) as exc:
        _log_lost(server, request, client_address, exc, logger(server))
        if server.reports_errors:
            _hosted_error(server, request, client_address, logger)
        return False
    except BaseException as exc:
        logger(server).exception(
            "%s: handler %s failed for client %s",
            server.name,
            server.handler_spec,
            client_address or "(unnamed)",
        )
        if server.reports_errors and isinstance(exc, Exception):
            _hosted_error(server, request, client_address, logger)
        return False
    finally:
        try:
            if done is not None:
                done()
            if hosted is None:
                shutdown_request(request)
            else:
                shutdown_hosted(server, request, logger)
        finally:
            REQUEST.reset(token)
    return True


def _hosted_error(
    server: ServerT,
    request: Request,
    client_address: Any,
    logger: Callable[[ServerT], logging.Logger],
) -> None:
    """The hosted object's own handle_error, in the handler's exception; never raises."""
    try:
        server.hosted.handle_error(request, client_address)
    except BaseException:
        logger(server).exception(
            "%s: handle_error failed for client %s", server.name, client_address
        )


def shutdown_hosted(
    server: ServerT, request: Request, logger: Callable[[ServerT], logging.Logger]
) -> None:
    """The hosted object's shutdown_request (which calls its close_request); never raises."""
    try:
        server.hosted.shutdown_request(request)
    except BaseException:
        logger(server).exception("%s: shutdown_request failed", server.name)
        shutdown_request(request)


def close_hosted(hosted: Any, logger: logging.Logger) -> None:
    """A hosted object's server_close(), when it is done with; never raises (its SystemExit
    included: it must not end the process that closes it)."""
    try:
        hosted.server_close()
    except BaseException:
        logger.exception("%s.server_close() failed", type(hosted).__name__)


def _log_lost(
    server: Hosted,
    request: Request,
    client_address: Any,
    exc: ConnectionError | TimeoutError,
    log: logging.Logger,
) -> None:
    """One warning for a connection that failed: its request_timeout if the socket timeout the
    request path set ran out (not one the handler set itself), else what the system said."""
    timeout = server.socket_timeout
    if (
        isinstance(exc, TimeoutError)
        and timeout is not None
        and isinstance(request, socket.socket)
        and request.gettimeout() == timeout  # (not the handler's own)
    ):
        log.warning(
            "%s: client %s timed out (request_timeout %gs)", server.name, client_address, timeout
        )
        return
    log.warning(
        "%s: connection with client %s lost (%s)",
        server.name,
        client_address,
        exc.strerror or exc,
    )


def shutdown_request(request: Request) -> None:
    """Like socketserver: half-close a connection before closing it; datagrams need nothing."""
    if isinstance(request, socket.socket):
        try:  # noqa: SIM105 (per request in every mode: no suppress object)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        request.close()


def handle_error(
    server: ServerT, client_address: Any, logger: Callable[[ServerT], logging.Logger]
) -> None:
    """socketserver's hook, for handlers that call it: log the current exception."""
    logger(server).exception("%s: error handling a request from %s", server.name, client_address)


def write_done(fd: int, forker: int, seq: int) -> None:
    """In a forked child whose handler has returned: write its DONE record to `fd` (a pipe).
    A full pipe drops it: the forker releases the request's source at the child's exit."""
    try:  # noqa: SIM105 (per request: no suppress object)
        os.write(fd, DONE.pack(forker, seq, os.getpid()))
    except OSError:
        pass


def flush_output() -> None:
    """Flush the buffered stdout and stderr: in a child before os._exit, one write each, so
    that concurrent children's lines do not interleave in the log; before fork(), so that no
    child writes its parent's buffered output again. A closed or broken stream is skipped."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (per child: no suppress object)
            stream.flush()
        except (OSError, ValueError):
            pass

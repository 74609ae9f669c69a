"""What serves each server's requests: a handler class, or a whole socketserver server hosted.

A `[servers.NAME]` table names either `handler = "module:Class"` or `server = "module:callable"`:
a callable taking no arguments that returns a `socketserver.BaseServer` built with
`bind_and_activate=False` (an `SimpleXMLRPCServer` with its functions registered, a wsgiref
`WSGIServer` with its application set, a `TCPServer` subclass with its own hooks). The object is
then what its handlers see as `self.server`, and its handler class is its `RequestHandlerClass`.

Invariants:

- the callable is called once per table (two tables never share an object) by `check`, at start,
  and at a reload only when the table or the callable's module changed; otherwise the running
  object, with its state, is kept (`load_all`'s `kept`);
- an object that cannot be hosted is refused with one line naming `servers.NAME.server`, before
  anything changes (a reload keeps the running configuration): the callable raised or returned
  something else; its socket is bound already or SSL-wrapped; it overrides `get_request`; its
  `socket_type` does not fit the address; its `server_bind`/`server_activate` touch the socket
  beyond binding it (adoption.py, run by `adopt` once the listener is known);
- hooks that are the supervisor's job (`process_request`, `serve_forever`, `handle_request`,
  `handle_timeout`), overridden by the object's own class, get one warning line: they are not
  used. socketserver's ThreadingMixIn and ForkingMixIn are not warned of: the mode replaces them.
"""

import logging
import socket
import socketserver
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from supervisor import adoption, handlers, handling
from supervisor.config import Config, ServerConfig
from supervisor.errors import ConfigError, describe
from supervisor.handlers import HandlerClass

log = logging.getLogger("supervisor")

NOT_USED = ("process_request", "serve_forever", "handle_request", "handle_timeout")
# Implementations of those hooks that the modes replace, so nothing is lost: no warning.
MIXINS = (socketserver.BaseServer, socketserver.ThreadingMixIn, socketserver.ForkingMixIn)


@dataclass(frozen=True, eq=False)
class Code:
    """A server's handler class, and the object hosted for a `server =` table (else None)."""

    handler: HandlerClass
    hosted: socketserver.BaseServer | None = None
    config: ServerConfig | None = None  # the table the object was made for
    module: ModuleType | None = None  # the callable's module, as imported then
    adopted: bool = False  # server_bind/server_activate have run (see adopt)

    @property
    def verifies(self) -> bool:
        """Its class overrides verify_request: asked for every admitted request."""
        return self.hosted is not None and _overrides(self.hosted, "verify_request")

    @property
    def reports_errors(self) -> bool:
        """Its class overrides handle_error: called for a handler's exception."""
        return self.hosted is not None and _overrides(self.hosted, "handle_error")

    @property
    def services(self) -> bool:
        """Its class overrides service_actions: called about every 0.5 s."""
        return self.hosted is not None and _overrides(self.hosted, "service_actions")


def _overrides(obj: object, name: str) -> bool:
    """Whether `obj` has its own `name` (its class's, or one set on the object itself), not
    BaseServer's or a socketserver mixin's."""
    if name in getattr(obj, "__dict__", {}):
        return True
    found = getattr(type(obj), name, None)
    return all(found is not getattr(base, name, None) for base in MIXINS)


def load_all(config: Config, fresh: bool = False, kept: Mapping[str, Code] = {}) -> dict[str, Code]:
    """Every server's code: handler classes imported, server objects made (not adopted yet)
    or kept from `kept`; raises ConfigError on the first that fails.

    With `fresh` (a reload), modules changed on disk since they were imported are imported
    again, and an object whose module was is made again."""
    handlers.extend_path(config.supervisor.path)
    codes: dict[str, Code] = {}
    refreshed: set[str] = set()
    # The objects in use, by id: two servers on one object would overwrite each other's
    # address and socket (an object kept for its own table is adopted already).
    running = {id(code.hosted): each for each, code in kept.items() if code.hosted is not None}
    hosted: set[int] = set()
    for name, server in config.servers.items():
        try:
            module_name = server.code.partition(":")[0]
            if fresh and module_name not in refreshed:
                handlers.refresh_if_changed(module_name)
                refreshed.add(module_name)
            if server.server:
                code = _kept(server, kept.get(name)) or _make(server)
                _check_unshared(code, name, hosted, running)
                hosted.add(id(code.hosted))
                codes[name] = code
            else:
                handler = handlers.import_handler(server.handler)
                handlers.check_fits(handler, server, server.handler)
                codes[name] = Code(handler)
        except (ValueError, TypeError) as exc:
            close_made(codes)  # (not to be hosted)
            raise ConfigError(config.source, f"servers.{name}.{server.code_key}", str(exc)) from exc
    return codes


def _check_unshared(code: Code, name: str, hosted: set[int], running: Mapping[int, str]) -> None:
    """Refuse an object made now that another table's is (made now, or running)."""
    key = id(code.hosted)
    if not code.adopted and (key in hosted or running.get(key, name) != name):
        spec = code.config.server if code.config else ""
        raise ValueError(
            f"{spec}() returned an object another server hosts: return a new one on each call"
        )


def _kept(server: ServerConfig, kept: Code | None) -> Code | None:
    """The running object, if its table and its callable's module are the same."""
    if kept is None or kept.hosted is None or kept.config != server:
        return None
    module = sys.modules.get(server.server.partition(":")[0])
    return kept if module is kept.module else None


def _make(server: ServerConfig) -> Code:
    """Call the server's callable; the object, checked (ValueError or TypeError if refused)."""
    spec = server.server
    factory = handlers.import_object(spec)
    if not callable(factory):
        raise TypeError(f"{spec} is not callable")
    try:
        obj = factory()
    except BaseException as exc:  # (whatever user code raises is its failure: one line)
        raise ValueError(f"{spec}() raised {describe(exc)}") from exc
    if not isinstance(obj, socketserver.BaseServer):
        raise TypeError(
            f"{spec}() returned {type(obj).__name__}, not a socketserver.BaseServer instance"
        )
    module = sys.modules.get(spec.partition(":")[0])
    try:
        code = Code(_handler_of(obj, spec), obj, server, module)
        _check(obj, server, spec)
        handlers.check_fits(code.handler, server, _name(code.handler))
    except BaseException:
        handling.close_hosted(obj, log)
        raise
    for hook in NOT_USED:
        if _overrides(obj, hook):
            log.warning(
                "servers.%s: %s overrides %s(), which is not used: the supervisor accepts and "
                "runs the requests (mode %s)",
                server.name,
                type(obj).__name__,
                hook,
                server.mode,
            )
    return code


def _handler_of(obj: socketserver.BaseServer, spec: str) -> HandlerClass:
    handler = getattr(obj, "RequestHandlerClass", None)
    if not (isinstance(handler, type) and issubclass(handler, socketserver.BaseRequestHandler)):
        raise TypeError(
            f"{spec}() returned a server whose RequestHandlerClass is not a "
            "socketserver.BaseRequestHandler subclass"
        )
    return handler


def _check(obj: socketserver.BaseServer, server: ServerConfig, spec: str) -> None:
    """Refuse what the supervisor cannot host (see the module docstring)."""
    what = f"{spec}() returned a {type(obj).__name__}"
    ssl = sys.modules.get("ssl")  # (not imported: no socket can be an SSL one)
    if ssl is not None and isinstance(getattr(obj, "socket", None), ssl.SSLSocket):
        raise ValueError(f"{what} with an SSL-wrapped socket: TLS is not supported here")
    if not adoption.unbound(obj):
        raise ValueError(f"{what} that binds in __init__: build it with bind_and_activate=False")
    if "get_request" in vars(obj) or getattr(type(obj), "get_request", None) not in _GET_REQUEST:
        raise ValueError(f"{what} that overrides get_request(): accepting is the supervisor's")
    kind = getattr(obj, "socket_type", None)
    if kind != server.address.socket_type:
        kind_name = getattr(kind, "name", repr(kind))
        raise ValueError(f"{what} with socket_type {kind_name}, which {server.address} cannot take")


_GET_REQUEST = (
    socketserver.TCPServer.get_request,
    socketserver.UDPServer.get_request,
)


def adopt(code: Code, listener: socket.socket | None) -> Code:
    """Run the object's server_bind/server_activate against the listening socket (or, with
    None, as `check` does, against the configured address); the code, adopted. Raises
    ValueError with one line if the hooks do what the supervisor cannot allow, or fail.
    The object's socket is then a closed one of the listener's kind (server.py gives a
    datagram server's its own)."""
    obj, config = code.hosted, code.config
    if obj is None or config is None or code.adopted:
        return code
    address: Any
    if listener is not None:
        family, kind, proto = listener.family, listener.type, listener.proto
        address = listener.getsockname()
    else:
        configured = config.address
        address = configured.path if configured.is_unix else (configured.host, configured.port)
        family, kind, proto = _family(address), configured.socket_type, 0
    try:
        adoption.adopt(obj, address, family, kind, proto)
    except adoption.Refused:
        raise
    except BaseException as exc:
        raise ValueError(f"{type(obj).__name__}.server_bind() raised {describe(exc)}") from exc
    return Code(code.handler, obj, code.config, code.module, adopted=True)


def adopt_all(
    config: Config, codes: Mapping[str, Code], listeners: Mapping[str, Any]
) -> dict[str, Code]:
    """`adopt` every server's code (`listeners`: name -> listening socket, or {} for the
    configured addresses); raises ConfigError on the first refusal (the caller closes the
    objects made for this configuration: `close_made`)."""
    adopted: dict[str, Code] = {}
    for name, code in codes.items():
        try:
            adopted[name] = adopt(code, listeners.get(name))
        except (ValueError, TypeError) as exc:
            raise ConfigError(config.source, f"servers.{name}.server", str(exc)) from exc
    return adopted


def close_made(codes: Mapping[str, Code]) -> None:
    """Close the hosted objects `load_all` made (not those it kept)."""
    for code in codes.values():
        if code.hosted is not None and not code.adopted:
            close(code)


def _family(address: Any) -> socket.AddressFamily:
    if isinstance(address, str):
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def close(code: Code) -> None:
    """Let a hosted object release what it holds (its class's `server_close()`); what it
    raises is logged. Its socket is never the supervisor's listener."""
    if code.hosted is None:
        return
    handling.close_hosted(code.hosted, log)


def _name(handler: type) -> str:
    return f"{handler.__module__}:{handler.__qualname__}"

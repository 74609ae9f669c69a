"""Import the request handler classes a configuration names (`module:Class`).

A handler is any `socketserver.BaseRequestHandler` subclass, written exactly as for the standard
library. Every failure becomes one ConfigError line naming `servers.NAME.handler` and the cause.
"""

import importlib
import socketserver
import sys
from collections.abc import Iterable

from supervisor.config import Config, ServerConfig
from supervisor.errors import ConfigError

HandlerClass = type[socketserver.BaseRequestHandler]


def extend_path(entries: Iterable[str]) -> None:
    """Put the `[supervisor] path` directories first on sys.path, once each."""
    for entry in reversed(tuple(entries)):
        if entry not in sys.path:
            sys.path.insert(0, entry)


def import_all(config: Config) -> dict[str, HandlerClass]:
    """Import every server's handler class; raise ConfigError on the first that fails."""
    extend_path(config.supervisor.path)
    classes = {}
    for name, server in config.servers.items():
        try:
            classes[name] = import_handler(server.handler)
            check_fits(classes[name], server)
        except (ValueError, TypeError) as exc:
            raise ConfigError(config.source, f"servers.{name}.handler", str(exc)) from exc
    return classes


def import_handler(spec: str) -> HandlerClass:
    """Import `module:Class`; raise ValueError or TypeError with a one-line reason."""
    module_name, _, attribute = spec.partition(":")
    try:
        found: object = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        reason = " ".join(str(exc).split())
        raise ValueError(f"cannot import {module_name!r} ({type(exc).__name__}: {reason})") from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as exc:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from exc
    if not (isinstance(found, type) and issubclass(found, socketserver.BaseRequestHandler)):
        raise TypeError(f"{spec} is not a socketserver.BaseRequestHandler subclass")
    return found


def check_fits(handler: HandlerClass, server: ServerConfig) -> None:
    """Refuse a stream-only handler on a datagram address, and the reverse."""
    if issubclass(handler, socketserver.StreamRequestHandler) and not server.address.is_stream:
        raise ValueError(
            f"{server.handler} is a StreamRequestHandler but {server.address} is a datagram address"
        )
    if issubclass(handler, socketserver.DatagramRequestHandler) and server.address.is_stream:
        raise ValueError(
            f"{server.handler} is a DatagramRequestHandler but {server.address} is a stream address"
        )

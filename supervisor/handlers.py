"""Import the code a configuration names: request handler classes (`module:Class`) and server
factories (`module:callable`, hosting.py).

A handler is any `socketserver.BaseRequestHandler` subclass, written exactly as for the standard
library. Every failure is one line (ValueError or TypeError) that hosting.py turns into a
ConfigError naming `servers.NAME.handler` (or `.server`).

On a reload (`fresh=True`), a handler module whose source file changed on disk since we imported
it is imported again as a new module object: new requests get the new classes, while requests
already running keep the old ones. Each module remembers the file it was loaded from in
`__supervisor_stamp__`; a failed fresh import leaves the old module in place.
"""

import contextlib
import importlib
import importlib.util
import os
import socketserver
import sys
from collections.abc import Iterable, Iterator
from types import ModuleType

from supervisor.config import ServerConfig
from supervisor.errors import describe

HandlerClass = type[socketserver.BaseRequestHandler]


@contextlib.contextmanager
def rollback_on_error() -> Iterator[None]:
    """Undo what imports did to sys.modules and sys.path if the block fails (a rejected
    reload changes nothing there either)."""
    path, modules = list(sys.path), dict(sys.modules)
    try:
        yield
    except BaseException:
        sys.path[:] = path
        for name in [name for name in sys.modules if name not in modules]:
            del sys.modules[name]
        sys.modules.update(modules)
        raise


def extend_path(entries: Iterable[str]) -> None:
    """Put the `[supervisor] path` directories first on sys.path, once each."""
    for entry in reversed(tuple(entries)):
        if entry not in sys.path:
            sys.path.insert(0, entry)


def _stamp(module: ModuleType) -> tuple[int, int] | None:
    path = getattr(module, "__file__", None)
    try:
        info = os.stat(path) if path else None
    except OSError:
        return None
    return None if info is None else (info.st_mtime_ns, info.st_size)


def refresh_if_changed(module_name: str) -> None:
    """Import `module_name` afresh if its file changed since we imported it."""
    old = sys.modules.get(module_name)
    if old is None or getattr(old, "__supervisor_stamp__", None) in (None, _stamp(old)):
        return
    del sys.modules[module_name]
    path = getattr(old, "__file__", None)
    if path and path.endswith(".py"):
        # The bytecode cache keys on the mtime in whole seconds and the size: an edit within
        # the same second that keeps the size would load the old code.
        with contextlib.suppress(OSError):
            os.unlink(importlib.util.cache_from_source(path))
    importlib.invalidate_caches()
    try:
        importlib.import_module(module_name)
    except BaseException as exc:  # (see import_handler)
        sys.modules[module_name] = old
        raise _import_error(module_name, exc) from exc


def _import_error(module_name: str, exc: BaseException) -> ValueError:
    return ValueError(f"cannot import {module_name!r} ({describe(exc)})")


def import_handler(spec: str) -> HandlerClass:
    """Import `module:Class`; raise ValueError or TypeError with a one-line reason."""
    found = import_object(spec)
    try:
        fits = isinstance(found, type) and issubclass(found, socketserver.BaseRequestHandler)
    except BaseException:
        fits = False
    if not fits:
        raise TypeError(f"{spec} is not a socketserver.BaseRequestHandler subclass")
    return found  # type: ignore[return-value]


def import_object(spec: str) -> object:
    """Import `module:name` (a dotted name in the module); raise ValueError with a one-line
    reason."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        if not hasattr(module, "__supervisor_stamp__"):
            module.__supervisor_stamp__ = _stamp(module)  # type: ignore[attr-defined]
        found: object = module
    except BaseException as exc:
        # Whatever a module's top level raises is its failure to import, reported as one
        # line: KeyboardInterrupt and other BaseExceptions too (no real Ctrl-C can reach this
        # point in `run`, where the signals are held or handled by the loop).
        raise _import_error(module_name, exc) from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except BaseException as exc:  # (a module's __getattr__ may raise anything)
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from exc
    return found


def check_fits(handler: HandlerClass, server: ServerConfig, spec: str) -> None:
    """Refuse a stream-only handler on a datagram address, and the reverse (`spec`: how the
    handler is named in messages)."""
    if issubclass(handler, socketserver.StreamRequestHandler) and not server.address.is_stream:
        raise ValueError(
            f"{spec} is a StreamRequestHandler but {server.address} is a datagram address"
        )
    if issubclass(handler, socketserver.DatagramRequestHandler) and server.address.is_stream:
        raise ValueError(
            f"{spec} is a DatagramRequestHandler but {server.address} is a stream address"
        )

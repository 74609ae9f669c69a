"""Preparing a configuration to run: every step that can fail, done before anything changes.

`prepare()` loads and validates the file, imports the handlers (afresh on a reload) and makes
the hosted servers' objects (hosting.py: only those whose table or module changed), finds a
listening socket for every server: the very socket it already has when its address did not
change, an inherited one (systemd socket activation) whose name or address matches, or one bound
now. The privilege checks (privileges.py) come first: their answers depend on the user the
process runs as, so every start and every reload makes them. A unix socket file that a server
keeps gets its new permissions last (those already changed are put back if one fails). If any
step fails, the sockets bound here are closed again (and the objects made here) and the error
is raised, so the running configuration is untouched. Start-up is the same with nothing to
reuse.
"""

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from supervisor import addresses, config, handlers, hosting, logs, privileges
from supervisor.config import Config, ServerConfig, SocketFile
from supervisor.errors import BindError, describe
from supervisor.hosting import Code
from supervisor.server import Server
from supervisor.sockets import Listener, SocketFileError, apply_socket_file, bind
from supervisor.stats import ReloadStats

log = logging.getLogger("supervisor")


@dataclass(frozen=True)
class Prepared:
    """A validated configuration with its code (handler classes, hosted objects adopted) and a
    listener for every server."""

    config: Config
    codes: Mapping[str, Code]
    listeners: Mapping[str, Listener]


@dataclass(frozen=True)
class ReloadResult:
    """The outcome of the last reload, for `supervisor reload`, `status` and systemd."""

    ok: bool
    message: str  # what changed, or the one-line error
    at: float = field(default_factory=time.time)
    exit_status: int = 0
    refused: bool = False  # not tried: the supervisor was busy (upgrading, stopping)


class Reloads:
    """What the reloads so far came to: the last outcome, and the counts the metrics show."""

    def __init__(self) -> None:
        self.last: ReloadResult | None = None
        self.stats = ReloadStats()

    def failed(self, message: str, exit_status: int, switching: bool = False) -> None:
        if switching:
            log.error("reload failed: %s", message)
        else:
            log.error("reload failed, still running the previous configuration: %s", message)
        self.last = ReloadResult(False, message, exit_status=exit_status)
        self.stats.failures += 1
        self.stats.last_ok = False

    def succeeded(self, old: Config, new: Config, changes: str) -> None:
        """Record a reload from `old` to `new`, done; warn of what applies at the next start."""
        self.last = ReloadResult(True, changes)
        self.stats.successes += 1
        self.stats.last_ok = True
        self.stats.last_success = self.last.at
        if new.metrics != old.metrics:
            log.warning("metrics: changes to [metrics] apply at the next start")
        if new.supervisor.credentials != old.supervisor.credentials:
            log.warning(  # (a process that dropped root cannot get it back)
                "supervisor.user: changes to [supervisor] user and group apply at the next start"
            )


@dataclass
class Switch:
    """What running a prepared configuration changes (see `switch`)."""

    servers: dict[str, Server]  # the servers to run now, by name
    moved: list[str]  # new servers, and servers on a new socket
    removed: list[tuple[Server, bool]]  # servers to retire; True: their listener is unused
    unused: list[Listener]  # listeners of kept servers that no server uses any more
    in_use: set[int]  # id() of every listener in use


def prepare(
    source: str | Config,
    current: Mapping[str, Listener] | None = None,
    spare: Iterable[Listener] = (),
    reloading: bool = False,
    kept: Mapping[str, Code] = {},
) -> Prepared:
    """Everything a (re)start needs; raises ConfigError or BindError and then changes nothing.

    `source` is the configuration file (or one already loaded); `current` maps the running
    servers' names to their listeners; `spare` are inherited sockets no server uses now;
    `reloading`: the handlers are imported afresh, and the process already runs as the user
    it will keep (a changed [supervisor] user applies at the next start); `kept`: the running
    servers' code, whose hosted objects are kept where nothing changed."""
    loaded = config.load(source) if isinstance(source, str) else source
    privileges.check(loaded, starting=not reloading)
    with handlers.rollback_on_error():
        codes = hosting.load_all(loaded, fresh=reloading, kept=kept)
        spare = list(spare)
        try:
            listeners = _listeners(loaded, current or {}, spare)
        except BaseException:
            hosting.close_made(codes)
            raise
        try:
            _apply_socket_files(loaded, listeners)
            sockets = {name: listener.socket for name, listener in listeners.items()}
            codes = hosting.adopt_all(loaded, codes, sockets)
        except BaseException:
            hosting.close_made(codes)
            old = [*(current or {}).values(), *spare]
            for listener in listeners.values():
                if not _among(listener, old):
                    listener.close()  # bound for this configuration: not to be kept
            raise
        if not reloading:  # (a reload warns as it switches)
            for name, listener in listeners.items():
                warn_reuse_port(name, loaded.servers[name], listener)
        return Prepared(loaded, codes, listeners)


def _apply_socket_files(loaded: Config, listeners: Mapping[str, Listener]) -> None:
    """Give the unix socket files that a server keeps (or takes over) their new permissions;
    if one fails, put back those already changed and raise BindError."""
    done: list[tuple[Listener, SocketFile]] = []
    for name, listener in listeners.items():
        wanted = loaded.servers[name].socket_file
        if not listener.address.is_unix or listener.socket_file == wanted:
            continue
        previous = listener.socket_file
        try:
            apply_socket_file(listener, wanted)
        except SocketFileError as exc:
            for changed, before in reversed(done):
                with contextlib.suppress(SocketFileError):
                    apply_socket_file(changed, before)
            raise BindError(
                f"{loaded.source}: servers.{name}: cannot set the permissions of "
                f"{listener.address.path} ({exc.strerror or exc})"
            ) from exc
        done.append((listener, previous))


def _listeners(
    loaded: Config, current: Mapping[str, Listener], spare: list[Listener]
) -> dict[str, Listener]:
    # First every server whose address did not change keeps its very socket; then the others
    # look for a free one at their address, or bind.
    found: dict[str, Listener] = {
        name: current[name]
        for name, server in loaded.servers.items()
        if name in current and current[name].address == server.address
    }
    bound: list[Listener] = []
    try:
        for name, server in loaded.servers.items():
            if name not in found:
                found[name] = _reusable(name, server, current, spare, [*found.values()]) or (
                    _bind(loaded.source, name, server)
                )
                if not _among(found[name], [*current.values(), *spare]):
                    bound.append(found[name])
    except BaseException:
        for new in bound:
            new.close()
        raise
    return found


def _bind(source: str, name: str, server: ServerConfig) -> Listener:
    try:
        return bind(server.address, server.backlog, server.socket_file, server.reuse_port)
    except (OSError, ValueError) as exc:  # (ValueError: a host name IDNA cannot encode)
        reason = (exc.strerror if isinstance(exc, OSError) else None) or describe(exc)
        what = (
            f"cannot set the permissions of {server.address.path}"
            if isinstance(exc, SocketFileError)
            else f"cannot bind {server.address}"
        )
        raise BindError(f"{source}: servers.{name}: {what} ({reason})") from exc


def _reusable(
    name: str,
    server: ServerConfig,
    current: Mapping[str, Listener],
    spare: list[Listener],
    taken: list[Listener],
) -> Listener | None:
    """A listener not `taken` for a new or moved server: one bound to its address (another
    server's, or an inherited one), or the only inherited one named after it."""
    free = [
        listener
        for listener in [*current.values(), *spare]
        if not _among(listener, taken)
        and listener.address.socket_type == server.address.socket_type
    ]
    ephemeral = not server.address.is_unix and server.address.port == 0
    if not ephemeral:
        for listener in free:
            if addresses.same(listener.bound, server.address):
                return listener
    named = [listener for listener in free if listener.inherited and listener.fd_name == name]
    return named[0] if len(named) == 1 else None


def _among(listener: Listener, listeners: Iterable[Listener]) -> bool:
    return any(listener is other for other in listeners)


def warn_reuse_port(name: str, server: ServerConfig, listener: Listener) -> None:
    """Warn when the socket a server runs on was bound with another SO_REUSEPORT than its
    reuse_port now asks for: the option counts before bind() only, and a socket in use is kept
    as it is (an unchanged address keeps its socket across reloads; systemd's sockets are its
    own). A socket systemd set it on, for a server that does not ask for it, is as meant."""
    if listener.inherited:
        if server.reuse_port and not listener.reuse_port:
            log.warning(
                "%s: reuse_port does not apply to the socket systemd passed in (%s): set "
                "ReusePort=yes in its .socket unit",
                name,
                listener.bound,
                extra=logs.about(name),
            )
    elif server.reuse_port != listener.reuse_port:
        log.warning(
            "%s: reuse_port = %s applies when the socket is bound anew (next start); until then "
            "%s keeps its socket, bound %s SO_REUSEPORT",
            name,
            "true" if server.reuse_port else "false",
            listener.bound,
            "with" if listener.reuse_port else "without",
            extra=logs.about(name),
        )


def switch(current: Mapping[str, Server], prepared: Prepared) -> Switch:
    """The second half of a reload, which cannot fail: the servers the prepared configuration
    runs. A kept server is reconfigured in place (its running requests keep what they have:
    handler class, limits, sockets); a new one is made; a removed one and the listeners no
    server uses any more are listed for the caller to retire and close."""
    in_use = {id(listener) for listener in prepared.listeners.values()}
    done = Switch({}, [], [], [], in_use)
    for name, server_config in prepared.config.servers.items():
        code, listener = prepared.codes[name], prepared.listeners[name]
        existing = current.get(name)
        # Warned of once: as the server gets this socket, or asks for another SO_REUSEPORT.
        if (
            existing is None
            or existing.listener is not listener
            or existing.config.reuse_port != server_config.reuse_port
        ):
            warn_reuse_port(name, server_config, listener)
        if existing is None:
            done.servers[name] = Server(server_config, code, listener)
            done.moved.append(name)
            continue
        previous = existing.listener
        if previous is not listener:
            done.moved.append(name)
        existing.reconfigure(server_config, code, listener)
        existing.close_old_sockets()
        if id(previous) not in in_use:
            done.unused.append(previous)
        done.servers[name] = existing
    for name, server in current.items():
        if name not in done.servers:
            done.removed.append((server, id(server.listener) not in in_use))
    return done

"""The configuration: a TOML file read into frozen dataclasses by the pure function `load`.

Every mistake in the file is reported as one `ConfigError` line naming the file, the table and
the key (`etc/supervisor.toml: servers.echo.max_children: must be an integer >= 1, got 0`).
Nothing here opens a socket or imports a handler: see `sockets.py` and `handlers.py`.
"""

import difflib
import enum
import grp
import hashlib
import ipaddress
import json
import math
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from supervisor import addresses
from supervisor.addresses import Address
from supervisor.errors import ConfigError, describe, message, shown

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
DEFAULT_METRICS_ADDRESS = "tcp://127.0.0.1:9464"
MAX_SECONDS = 86400.0  # a day: the longest wait a setting may ask for
# Every integer has a largest value, so that nothing downstream (JSON, float metrics, a token
# bucket, setrlimit) meets a number it cannot take: a count of processes or requests at once
# is at most Linux's largest pid_max; other counts fit a C int; sizes fit a 64-bit rlimit.
MAX_CHILDREN = 2**22
MAX_COUNT = 2**31 - 1
MAX_MIB = 2**40  # an exbibyte
MAX_CPU_SECONDS = 2**32
MAX_FILE_SIZE = 4 * 2**20  # bytes of a configuration file (1,000 servers take about 150 kB)
_SERVER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # (each used with fullmatch)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HANDLER_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class Mode(enum.StrEnum):
    """How a server runs its requests."""

    FORK = "fork"
    PREFORK = "prefork"
    THREAD = "thread"
    INLINE = "inline"


PREFORK_KEYS = ("workers", "max_requests", "max_requests_jitter", "max_rss")
# Guards and child limits: per server, with defaults in [supervisor] (see Limits).
LIMIT_KEYS = (
    "request_timeout",
    "max_per_source",
    "source_ipv4_prefix",
    "source_ipv6_prefix",
    "rate",
    "rate_burst",
    "source_rate",
    "source_rate_burst",
    "allow",
    "deny",
    "banner_fail",
    "rlimit_as",
    "rlimit_cpu",
    "rlimit_nofile",
    "nice",
)
SOCKET_FILE_KEYS = ("socket_mode", "socket_owner", "socket_group")
CHILD_LIMIT_KEYS = ("rlimit_as", "rlimit_cpu", "rlimit_nofile", "nice")
# Modes whose handlers run inside the supervisor process: no child to limit or switch user in.
IN_PROCESS_MODES = frozenset({Mode.THREAD, Mode.INLINE})
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Peer:
    """An allow/deny entry for a unix socket: the connecting process's uid or gid, as the
    kernel reports it (SO_PEERCRED). `text` is the entry as written."""

    kind: str  # "uid" or "gid"
    id: int
    text: str

    def __str__(self) -> str:
        return self.text


Rule = Network | Peer


@dataclass(frozen=True)
class Limits:
    """A server's guards (checked in the supervisor before a request runs) and its children's
    resource limits. 0 or None: no limit."""

    request_timeout: float = 0.0  # seconds; fork: SIGTERM, then SIGKILL; else a socket timeout
    max_per_source: int = 0  # concurrent requests per client address (or per uid, unix)
    source_ipv4_prefix: int = 32  # clients in one such network count as one source
    source_ipv6_prefix: int = 64
    rate: float = 0.0  # connections per second, whole server (token bucket)
    rate_burst: int = 0  # the bucket's size; 0 until resolved (then at least 1)
    source_rate: float = 0.0  # the same, per source
    source_rate_burst: int = 0
    allow: tuple[Rule, ...] = ()  # empty: everyone (unless denied)
    deny: tuple[Rule, ...] = ()  # wins over allow
    banner_fail: str | None = None  # sent to a rejected stream client before it is closed
    rlimit_as: int = 0  # MiB of address space
    rlimit_cpu: int = 0  # seconds of CPU
    rlimit_nofile: int = 0  # open files
    nice: int | None = None

    @property
    def guarded(self) -> bool:
        """Whether connections are checked before they are served."""
        return bool(self.max_per_source or self.rate or self.source_rate or self.allow or self.deny)

    @property
    def child_limits(self) -> bool:
        """Whether a child has resource limits to apply before its handler runs."""
        return (
            bool(self.rlimit_as or self.rlimit_cpu or self.rlimit_nofile) or self.nice is not None
        )


@dataclass(frozen=True)
class Credentials:
    """A user to run as: the uid and gid, and the names as written (for messages)."""

    uid: int
    gid: int
    user: str
    group: str


@dataclass(frozen=True)
class SocketFile:
    """The permissions a unix socket file is given right after bind() (before listen())."""

    mode: int | None = None
    uid: int = -1  # -1: unchanged (os.chown)
    gid: int = -1


@dataclass(frozen=True)
class ServerConfig:
    """One `[servers.NAME]` table."""

    name: str
    address: Address
    handler: str  # `module:Class`, or "" when `server` names a factory instead (hosting.py)
    mode: Mode = Mode.FORK
    max_children: int = 40
    backlog: int = 1024
    max_packet_size: int = 8192
    reuse_port: bool = False  # SO_REUSEPORT before bind(): other sockets may share the port
    # prefork: long-lived workers, each recycled after max_requests (+ up to max_requests_jitter
    # more, at random) requests, or once its peak RSS passes max_rss MiB; 0 means never.
    workers: int = 0
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_rss: int = 0
    limits: Limits = field(default_factory=Limits)
    # The children's user and group (the supervisor must keep root for this); None: the
    # supervisor's own.
    credentials: Credentials | None = None
    socket_file: SocketFile = field(default_factory=SocketFile)
    server: str = ""  # `module:callable` returning a socketserver server, or "" (handler given)

    @property
    def code(self) -> str:
        """What serves the requests, as written: the handler class or the server factory."""
        return self.server or self.handler

    @property
    def code_key(self) -> str:
        """The key that names it: `handler` or `server`."""
        return "server" if self.server else "handler"


@dataclass(frozen=True)
class SupervisorConfig:
    """The `[supervisor]` table."""

    shutdown_timeout: float = 10.0
    kill_grace: float = 2.0
    max_children: int | None = None
    log_level: str = "info"
    log_format: str = "text"  # or "json": one object per line (logs.JsonFormatter)
    path: tuple[str, ...] = ()
    pidfile: str | None = None
    log_file: str | None = None
    fork_server: bool = True  # fork mode's stream servers fork from a small process (forking.py)
    # Started as root: the user and group the supervisor drops to once everything is bound.
    credentials: Credentials | None = None
    allow_root: bool = False  # let handlers run as root (refused otherwise: see privileges.py)
    limits: Limits = field(default_factory=Limits)  # the servers' defaults
    watch_config: bool = False  # reload when the file changes (watch.py)

    @property
    def control_socket(self) -> str | None:
        return None if self.pidfile is None else control_socket_for(self.pidfile)


def control_socket_for(pidfile: str) -> str:
    """The control socket lives next to the pidfile: supervisor.pid -> supervisor.sock."""
    return pidfile.removesuffix(".pid") + ".sock"


@dataclass(frozen=True)
class MetricsConfig:
    """The `[metrics]` table: the Prometheus endpoint."""

    enabled: bool = True
    address: Address = field(default_factory=lambda: addresses.parse(DEFAULT_METRICS_ADDRESS))


@dataclass(frozen=True)
class Config:
    """A whole configuration file, validated."""

    source: str
    supervisor: SupervisorConfig
    servers: Mapping[str, ServerConfig]
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    digest: str = field(default="", compare=False)  # of the bytes read (watch_config's)


def load(path: str) -> Config:
    """Read and validate the file at `path`; raise ConfigError naming the first problem."""
    data = read_bytes(path)
    return replace(parse(_decode(path, data), path), digest=content_digest(data))


def content_digest(data: bytes) -> str:
    """A configuration file's content, as compared by watch_config."""
    return hashlib.sha256(data).hexdigest()


def load_metrics(path: str) -> MetricsConfig:
    """Only the `[metrics]` table of the file at `path`: `supervisor health` must still find the
    endpoint while the rest of the file holds an edit that a reload would reject."""
    return _metrics(_Table(path, "", read_document(path)).table("metrics"), _base(path))


def _base(source: str) -> str:
    """The directory relative paths in the file at `source` are relative to."""
    return os.path.dirname(os.path.abspath(source))


def read_document(path: str) -> dict[str, Any]:
    """The TOML document in the regular file at `path`, of at most MAX_FILE_SIZE bytes."""
    return _decode(path, read_bytes(path))


def pidfile_as_written(path: str) -> str | None:
    """The `[supervisor] pidfile` value as written in the file at `path`, also when the file is
    not TOML because of a mistake elsewhere in it: the control commands must still find the
    running instance, to have it reject the file and say why. A value only a TOML parser
    could read (escapes, a multi-line string) counts as none. Raises ConfigError if the file
    cannot be read."""
    data = read_bytes(path)
    try:
        document = _decode(path, data)
    except ConfigError:
        return _scan_pidfile(data.decode("utf-8", "replace"))
    table = document.get("supervisor")
    value = table.get("pidfile") if isinstance(table, dict) else None
    return value if isinstance(value, str) else None


_PIDFILE_LINE = re.compile(
    r"""[ \t]*pidfile[ \t]*=[ \t]*(?:"([^"\\\x00-\x1f]*)"|'([^'\x00-\x1f]*)')[ \t]*(?:#.*)?"""
)


def _scan_pidfile(text: str) -> str | None:
    """`pidfile = "..."` in the [supervisor] table, line by line (see pidfile_as_written)."""
    table = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            table = stripped.split("#", 1)[0].strip()
        elif table == "[supervisor]" and (match := _PIDFILE_LINE.fullmatch(line)):
            return match[1] if match[1] is not None else match[2]
    return None


def read_bytes(path: str) -> bytes:
    """The content of the regular file at `path`, at most MAX_FILE_SIZE bytes. Opened without
    blocking (a FIFO would wait for a writer) and checked before it is read (a device such as
    /dev/zero never ends)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # (ValueError: a NUL byte in the path)
        raise ConfigError(path, "", f"cannot read the file ({_reason(exc)})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(path, "", f"not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size > MAX_FILE_SIZE:
            raise ConfigError(path, "", f"larger than {MAX_FILE_SIZE // 2**20} MiB")
        data = _read_at_most(fd, MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the file ({_reason(exc)})") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:  # (it grew while being read)
        raise ConfigError(path, "", f"larger than {MAX_FILE_SIZE // 2**20} MiB")
    return data


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def _read_at_most(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _decode(path: str, data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"TOML syntax error: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(path, "", "TOML: arrays or tables nested too deeply") from exc
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise ConfigError(path, "", f"TOML: a value cannot be read ({describe(exc)})") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return describe(exc)


def parse(data: Mapping[str, Any], source: str) -> Config:
    """Validate an already decoded TOML document; `source` names it in errors."""
    top = _Table(source, "", data)
    top.only("supervisor", "servers", "metrics")
    supervisor = _supervisor(top.table("supervisor"), source)
    metrics = _metrics(top.table("metrics"), _base(source))
    servers_table = top.table("servers")
    if not servers_table.data:
        raise ConfigError(source, "servers", "at least one server is required")
    servers = {
        name: _server(name, servers_table.table(name), supervisor) for name in servers_table.data
    }
    _check_unique_addresses(source, servers)
    _check_metrics_address(source, metrics, servers)
    _check_distinct_files(source, supervisor, metrics, servers)
    _check_global_cap(source, supervisor, servers)
    return Config(source, supervisor, servers, metrics)


def _check_global_cap(
    source: str, supervisor: SupervisorConfig, servers: Mapping[str, ServerConfig]
) -> None:
    """Prefork workers count towards the global max_children: they must leave room for the
    fork and thread servers, or those would never be let in (silently: nothing is wrong with
    them)."""
    cap = supervisor.max_children
    workers = sum(server.workers for server in servers.values())
    if cap is None or not workers:
        return
    others = any(server.mode in (Mode.FORK, Mode.THREAD) for server in servers.values())
    if workers > cap or (others and workers >= cap):
        room = " and leave room for the fork and thread servers" if others else ""
        raise ConfigError(
            source,
            "supervisor.max_children",
            f"{cap} is too small for the prefork servers' {workers} workers{room}",
        )


@dataclass(frozen=True)
class Diff:
    """What a reload changes, by server name."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def __str__(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if names
        ]
        return "; ".join(parts) or "no server changed"


def diff(old: Config, new: Config) -> Diff:
    """Servers added, removed and changed (any key) between two configurations."""
    return Diff(
        added=tuple(name for name in new.servers if name not in old.servers),
        removed=tuple(name for name in old.servers if name not in new.servers),
        changed=tuple(
            name
            for name, server in new.servers.items()
            if name in old.servers and old.servers[name] != server
        ),
    )


def _supervisor(table: "_Table", source: str) -> SupervisorConfig:
    table.only(
        "shutdown_timeout",
        "kill_grace",
        "max_children",
        "log_level",
        "log_format",
        "path",
        "pidfile",
        "log_file",
        "fork_server",
        "user",
        "group",
        "allow_root",
        "watch_config",
        *LIMIT_KEYS,
    )
    base = _base(source)
    pidfile = table.optional_path("pidfile", base)
    if pidfile is not None and len(control_socket_for(pidfile).encode()) > addresses.UNIX_PATH_MAX:
        raise table.error(
            "pidfile",
            f"the control socket next to it, {control_socket_for(pidfile)}, would be longer "
            f"than the {addresses.UNIX_PATH_MAX} bytes a unix socket path may have",
        )
    return SupervisorConfig(
        pidfile=pidfile,
        log_file=table.optional_path("log_file", base),
        shutdown_timeout=table.number("shutdown_timeout", 10.0, minimum=0, maximum=MAX_SECONDS),
        kill_grace=table.number("kill_grace", 2.0, minimum=0, maximum=MAX_SECONDS),
        max_children=table.optional_integer("max_children", minimum=1, maximum=MAX_CHILDREN),
        log_level=table.choice("log_level", "info", LOG_LEVELS),
        log_format=table.choice("log_format", "text", LOG_FORMATS),
        path=tuple(os.path.join(base, entry) for entry in table.strings("path")),
        fork_server=table.boolean("fork_server", True),
        credentials=table.credentials(),
        allow_root=table.boolean("allow_root", False),
        watch_config=table.boolean("watch_config", False),
        limits=_limits(table, Limits(), None),
    )


def _metrics(table: "_Table", base: str) -> MetricsConfig:
    table.only("enabled", "address")
    address = table.address("address", base) if "address" in table.data else MetricsConfig().address
    if not address.is_stream:
        raise table.error(
            "address", "the metrics endpoint needs a stream address (tcp://, unix://)"
        )
    return MetricsConfig(enabled=table.boolean("enabled", True), address=address)


def _check_metrics_address(
    source: str, metrics: MetricsConfig, servers: Mapping[str, ServerConfig]
) -> None:
    if not metrics.enabled:
        return
    for server in servers.values():
        if addresses.overlaps(metrics.address, server.address):
            what = f"{metrics.address} is already used by servers.{server.name} ({server.address})"
            raise ConfigError(source, "metrics.address", what)


def _server(name: str, table: "_Table", supervisor: SupervisorConfig) -> ServerConfig:
    if not _SERVER_NAME.fullmatch(name):
        raise table.error("", "a server name is 1-64 letters, digits, '_', '.' or '-'")
    table.only(
        "address",
        "handler",
        "server",
        "mode",
        "max_children",
        "backlog",
        "max_packet_size",
        "reuse_port",
        *PREFORK_KEYS,
        *LIMIT_KEYS,
        "user",
        "group",
        *SOCKET_FILE_KEYS,
    )
    address = table.address("address", _base(table.source))
    if not address.is_stream and "backlog" in table.data:
        raise table.error("backlog", "only applies to stream addresses (tcp://, unix://)")
    if address.is_stream and "max_packet_size" in table.data:
        raise table.error("max_packet_size", "only applies to datagram addresses")
    if address.is_unix and "reuse_port" in table.data:
        raise table.error("reuse_port", "only applies to tcp:// and udp:// addresses")
    mode = Mode(table.choice("mode", Mode.FORK.value, tuple(Mode)))
    _check_in_process(table, mode)
    max_children = table.integer("max_children", 40, minimum=1, maximum=MAX_CHILDREN)
    handler, factory = _code(table)
    return ServerConfig(
        name=name,
        address=address,
        handler=handler,
        server=factory,
        mode=mode,
        max_children=max_children,
        backlog=table.integer("backlog", 1024, minimum=1, maximum=65535),
        max_packet_size=table.integer("max_packet_size", 8192, minimum=1, maximum=65535),
        reuse_port=table.boolean("reuse_port", False),
        limits=_server_limits(table, supervisor, address, mode),
        credentials=_server_credentials(table, supervisor),
        socket_file=_socket_file(table, address),
        **_prefork(table, mode, address, max_children),
    )


def _code(table: "_Table") -> tuple[str, str]:
    """(handler, server): exactly one of the two keys, each `module:name`."""
    given = [key for key in ("handler", "server") if key in table.data]
    if len(given) != 1:
        choice = (
            "handler = 'module:Class' (a request handler class) or server = 'module:callable' "
            "(a function that returns a socketserver server)"
        )
        if given:
            raise table.error("server", f"give either {choice}, not both")
        raise table.error("handler", f"is required, or else server: give either {choice}")
    spec = table.code(given[0])
    return (spec, "") if given[0] == "handler" else ("", spec)


def _limits(table: "_Table", inherited: Limits, address: Address | None) -> Limits:
    """The LIMIT_KEYS of a table; those it does not set come from `inherited`. With an
    `address` (a server's), what does not apply to it is an error if set here, and left out
    if inherited (an [supervisor] default for IP servers means nothing to a unix one)."""
    given = table.data
    values: dict[str, Any] = {}
    for key, most in (("request_timeout", MAX_SECONDS), ("rate", 1e6), ("source_rate", 1e6)):
        values[key] = table.number(key, getattr(inherited, key), minimum=0, maximum=most)
    integers: tuple[tuple[str, int, int], ...] = (
        ("max_per_source", 0, MAX_CHILDREN),
        ("source_ipv4_prefix", 0, 32),
        ("source_ipv6_prefix", 0, 128),
        ("rate_burst", 1, MAX_COUNT),
        ("source_rate_burst", 1, MAX_COUNT),
        ("rlimit_as", 0, MAX_MIB),
        ("rlimit_cpu", 0, MAX_CPU_SECONDS),
        ("rlimit_nofile", 0, 2**30),
    )
    for key, minimum, maximum in integers:
        values[key] = table.integer(key, getattr(inherited, key), minimum, maximum)
    nice = table.optional_integer("nice", minimum=-20, maximum=19)
    values["nice"] = inherited.nice if nice is None else nice
    for key in ("allow", "deny"):
        values[key] = table.rules(key) if key in given else getattr(inherited, key)
    banner = table.banner("banner_fail") if "banner_fail" in given else inherited.banner_fail
    values["banner_fail"] = banner
    for rate, burst in (("rate", "rate_burst"), ("source_rate", "source_rate_burst")):
        if burst in given and not values[rate]:
            raise table.error(burst, f"needs {rate} (connections per second)")
        if rate in given and burst not in given:
            values[burst] = 0  # a rate set here gets its own default burst, not an inherited one
    limits = Limits(**values)
    return limits if address is None else _fit(table, limits, address)


def _fit(table: "_Table", limits: Limits, address: Address) -> Limits:
    """Check a server's limits against its address; drop inherited ones that do not apply;
    give each rate its default burst (one second's worth)."""
    given = table.data
    fitted: dict[str, Any] = {}
    for key in ("allow", "deny"):
        rules: tuple[Rule, ...] = getattr(limits, key)
        kept = tuple(rule for rule in rules if _applies(rule, address))
        if key in given and len(kept) != len(rules):
            wrong = next(rule for rule in rules if rule not in kept)
            raise table.error(key, f"{shown(str(wrong))} {_rule_scope(address)}")
        fitted[key] = kept
    per_source_unknown = address.is_unix and not address.is_stream  # no SO_PEERCRED here
    for key in ("max_per_source", "source_rate"):
        if per_source_unknown and getattr(limits, key):
            if key in given:
                raise table.error(key, "a unix datagram socket does not tell who sent a datagram")
            fitted[key] = 0
    if limits.banner_fail is not None and not address.is_stream:
        if "banner_fail" in given:
            raise table.error("banner_fail", "only applies to stream addresses (tcp://, unix://)")
        fitted["banner_fail"] = None
    for rate, burst in (("rate", "rate_burst"), ("source_rate", "source_rate_burst")):
        value = fitted.get(rate, getattr(limits, rate))
        if value and not getattr(limits, burst):
            fitted[burst] = max(1, math.ceil(value))
        elif not value:
            fitted[burst] = 0
    return replace(limits, **fitted)


def _applies(rule: Rule, address: Address) -> bool:
    if isinstance(rule, Peer):
        return address.scheme == "unix"
    return not address.is_unix


def _rule_scope(address: Address) -> str:
    if address.scheme == "unixgram":
        return "cannot apply: a unix datagram socket does not tell who sent a datagram"
    if address.is_unix:
        return "is not a peer rule (uid:N, gid:N, user:NAME, group:NAME) for a unix socket"
    return "is a peer rule: those apply to unix sockets only"


def _server_limits(
    table: "_Table", supervisor: SupervisorConfig, address: Address, mode: Mode
) -> Limits:
    limits = _limits(table, supervisor.limits, address)
    if limits.request_timeout and not address.is_stream and mode in (Mode.THREAD, Mode.INLINE):
        # (a datagram is answered on the server's own socket: no connection to time out)
        if "request_timeout" in table.data:
            raise table.error(
                "request_timeout",
                "a datagram server in thread or inline mode has no connection to time out "
                "(fork mode has a child to stop)",
            )
        limits = replace(limits, request_timeout=0.0)
    if mode in IN_PROCESS_MODES:
        # [supervisor] defaults for children mean nothing here; set in this table, an error.
        return replace(limits, rlimit_as=0, rlimit_cpu=0, rlimit_nofile=0, nice=None)
    if mode is Mode.PREFORK:  # its workers accept: the supervisor never sees the connections
        for key in ("max_per_source", "rate", "source_rate"):
            if getattr(limits, key):
                inherited = "" if key in table.data else f" (from supervisor.{key}: set 0 here)"
                raise table.error(
                    key,
                    f"not available in prefork mode, where workers accept on their own{inherited}",
                )
    return limits


def _check_in_process(table: "_Table", mode: Mode) -> None:
    """Thread and inline handlers run inside the supervisor: no child of their own to give a
    user or resource limits to."""
    if mode not in IN_PROCESS_MODES:
        return
    for key in ("user", "group"):
        if key in table.data:
            raise table.error(
                key,
                f"not available in {mode} mode: its handlers run inside the supervisor process, "
                "as [supervisor] user",
            )
    for key in CHILD_LIMIT_KEYS:
        if key in table.data:
            raise table.error(
                key,
                f"not available in {mode} mode: its handlers run inside the supervisor process "
                "(use fork or prefork mode, or limit the supervisor itself; it runs as "
                "[supervisor] user)",
            )


def _server_credentials(table: "_Table", supervisor: SupervisorConfig) -> Credentials | None:
    credentials = table.credentials()
    if credentials is not None and supervisor.credentials is not None:
        raise table.error(
            "user",
            "a server's own user needs the supervisor to keep root: remove supervisor.user "
            "(and supervisor.group), or this one",
        )
    return credentials


def _socket_file(table: "_Table", address: Address) -> SocketFile:
    present = [key for key in SOCKET_FILE_KEYS if key in table.data]
    if not present:
        return SocketFile()
    if not address.is_unix:
        raise table.error(present[0], "only applies to unix socket addresses")
    owner = table.data.get("socket_owner")
    group = table.data.get("socket_group")
    return SocketFile(
        mode=table.file_mode("socket_mode") if "socket_mode" in table.data else None,
        uid=-1 if owner is None else table.user_id("socket_owner")[0],
        gid=-1 if group is None else table.group_id("socket_group"),
    )


def _prefork(table: "_Table", mode: Mode, address: Address, max_children: int) -> dict[str, int]:
    """The prefork keys: only with mode = "prefork", which needs a stream address."""
    if mode is not Mode.PREFORK:
        for key in PREFORK_KEYS:
            if key in table.data:
                raise table.error(key, 'only applies to mode = "prefork"')
        return {}
    if not address.is_stream:
        raise table.error("mode", "prefork needs a stream address (tcp://, unix://)")
    workers = table.optional_integer("workers", minimum=1, maximum=1024)
    if workers is None:  # the CPUs this process may use (a container's limit, not the host's)
        workers = min(len(os.sched_getaffinity(0)), max_children)
    elif workers > max_children:
        raise table.error(
            "workers", f"must be at most max_children ({max_children}), got {workers}"
        )
    max_requests = table.integer("max_requests", 0, minimum=0, maximum=MAX_COUNT)
    default_jitter = max_requests // 10  # recycled workers should not all restart together
    jitter = table.integer("max_requests_jitter", default_jitter, minimum=0, maximum=MAX_COUNT)
    return {
        "workers": workers,
        "max_requests": max_requests,
        "max_requests_jitter": jitter,
        "max_rss": table.integer("max_rss", 0, minimum=0, maximum=MAX_MIB),
    }


def _check_unique_addresses(source: str, servers: Mapping[str, ServerConfig]) -> None:
    """Two servers may not compete for one socket. Host names are compared as written."""
    # Only addresses with the same port (or unix path) can overlap: compare within those.
    buckets: dict[object, list[ServerConfig]] = {}
    for server in servers.values():
        address = server.address
        key = os.path.normpath(address.path) if address.is_unix else address.port
        bucket = buckets.setdefault(key, [])
        for earlier in bucket:
            if addresses.overlaps(address, earlier.address):
                where = f"servers.{server.name}.address"
                what = f"{address} is already used by servers.{earlier.name} ({earlier.address})"
                raise ConfigError(source, where, what)
        bucket.append(server)


def _check_distinct_files(
    source: str,
    supervisor: SupervisorConfig,
    metrics: MetricsConfig,
    servers: Mapping[str, ServerConfig],
) -> None:
    """The files the supervisor writes or binds are all different, and none is this file: a
    log file that is also the pidfile would make the instance impossible to control."""
    files: list[tuple[str, str | None]] = [
        ("supervisor.pidfile", supervisor.pidfile),
        ("supervisor.log_file", supervisor.log_file),
    ]
    if supervisor.pidfile is not None:
        files.append(("the control socket next to supervisor.pidfile", supervisor.control_socket))
    if metrics.enabled and metrics.address.is_unix:
        files.append(("metrics.address", metrics.address.path))
    files += [
        (f"servers.{server.name}.address", server.address.path)
        for server in servers.values()
        if server.address.is_unix
    ]
    seen: dict[str, str] = {os.path.normpath(os.path.abspath(source)): "this configuration file"}
    for where, path in files:
        if path is None:
            continue
        key = os.path.normpath(path)
        if key in seen:
            raise ConfigError(source, where, f"{path} is also {seen[key]}")
        seen[key] = where


_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
)


def _type_name(value: object) -> str:
    for kind, name in _TOML_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _quote_key(key: str) -> str:
    """A key as TOML would write it: bare when it can be, else quoted with escapes, so that an
    error naming it stays on one line."""
    if not key or _BARE_KEY.fullmatch(key):
        return key
    return json.dumps(key)


class _Table:
    """One TOML table being read; every error names `source: where.key`."""

    def __init__(self, source: str, where: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ConfigError(source, where, f"must be a table, got {_type_name(data)}")
        self.source = source
        self.where = where
        self.data: dict[str, Any] = data

    def error(self, key: str, what: str) -> ConfigError:
        key = _quote_key(key)
        where = f"{self.where}.{key}" if self.where and key else self.where or key
        return ConfigError(self.source, where, what)

    def only(self, *known: str) -> None:
        for key in self.data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(key, f"unknown key{hint}")

    def table(self, key: str) -> "_Table":
        quoted = _quote_key(key)
        where = f"{self.where}.{quoted}" if self.where else quoted
        return _Table(self.source, where, self.data.get(key, {}))

    def _get(self, key: str, kind: type | tuple[type, ...], expected: str) -> Any:
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise self.error(key, f"must be {expected}, got {_type_name(value)} {shown(value)}")
        if isinstance(value, str):
            self._check_text(key, value)
        return value

    def _check_text(self, key: str, value: str) -> None:
        """No NUL byte: no path, user name or address can hold one (the system calls would
        refuse it only later, as `run` starts or a reload switches)."""
        if "\0" in value:
            raise self.error(key, f"must not contain a NUL byte, got {shown(value)}")

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        value = self.optional_integer(key, minimum, maximum)
        return default if value is None else value

    def optional_integer(self, key: str, minimum: int, maximum: int) -> int | None:
        if key not in self.data:
            return None
        expected = f"an integer from {minimum} to {maximum}"
        value: int = self._get(key, int, expected)
        if not minimum <= value <= maximum:
            raise self.error(key, f"must be {expected}, got {shown(value)}")
        return value

    def number(self, key: str, default: float, minimum: float, maximum: float) -> float:
        if key not in self.data:
            return default
        expected = f"a number from {minimum:g} to {maximum:g}"
        value: int | float = self._get(key, (int, float), expected)
        if not minimum <= value <= maximum:  # exact for huge integers; false for NaN
            text = f"{value:g}" if isinstance(value, float) else shown(value)
            raise self.error(key, f"must be {expected}, got {text}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_type_name(value)} {shown(value)}")
        return value

    def string(self, key: str) -> str:
        if key not in self.data:
            raise self.error(key, "is required")
        value: str = self._get(key, str, "a string")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        if key not in self.data:
            return default
        value = self.string(key)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {shown(value)}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        if key not in self.data:
            return ()
        values: list[Any] = self._get(key, list, "an array of strings")
        if not all(isinstance(value, str) for value in values):
            raise self.error(key, "must be an array of strings")
        for value in values:
            self._check_text(key, value)
        return tuple(values)

    def optional_path(self, key: str, base: str) -> str | None:
        """A file path, relative to the configuration file's directory."""
        if key not in self.data:
            return None
        value = self.string(key)
        if (
            not value
            or value.endswith("/")
            or os.path.basename(os.path.normpath(value))
            in (
                ".",
                "..",
            )
        ):
            raise self.error(key, f"must name a file, got {shown(value)}")
        return os.path.normpath(os.path.join(base, value))

    def rules(self, key: str) -> tuple[Rule, ...]:
        """allow / deny: CIDR networks (an address alone is one host), or for unix sockets
        uid:N, gid:N, user:NAME, group:NAME."""
        rules: list[Rule] = []
        for entry in self.strings(key):
            kind, colon, rest = entry.partition(":")
            if colon and kind in ("uid", "gid", "user", "group"):
                rules.append(self._peer(key, entry, kind, rest))
                continue
            try:
                rules.append(ipaddress.ip_network(entry))
            except ValueError as exc:
                raise self.error(
                    key,
                    f"{shown(entry)} is not a network (CIDR), an address, or uid:, gid:, user:, "
                    f"group: ({message(exc)})",
                ) from exc
        return tuple(rules)

    def _peer(self, key: str, entry: str, kind: str, rest: str) -> Peer:
        if kind in ("uid", "gid"):
            digits = rest.isascii() and rest.isdigit() and len(rest) <= 10
            if not digits or int(rest) >= 2**32 - 1:
                raise self.error(key, f"{shown(entry)}: {kind}: takes a number below 4294967295")
            return Peer(kind, int(rest), entry)
        try:
            found = pwd.getpwnam(rest).pw_uid if kind == "user" else grp.getgrnam(rest).gr_gid
        except KeyError as exc:
            raise self.error(key, f"{shown(entry)}: no such {kind}") from exc
        return Peer("uid" if kind == "user" else "gid", found, entry)

    def banner(self, key: str) -> str:
        """A line of text: no line breaks inside (one may end it), at most 1024 characters."""
        text = self.string(key)
        line = text.removesuffix("\n").removesuffix("\r")
        if not line or not line.isprintable() or len(line) > 1024:
            raise self.error(key, "must be one line of 1 to 1024 printable characters")
        return text

    def user_id(self, key: str) -> tuple[int, int, str]:
        """A user name or number: (uid, primary gid, name)."""
        value = self.data[key]
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                entry = pwd.getpwuid(value)
            else:
                entry = pwd.getpwnam(self.string(key))
        except (KeyError, OverflowError) as exc:
            raise self.error(key, f"no such user {shown(value)}") from exc
        return entry.pw_uid, entry.pw_gid, entry.pw_name

    def group_id(self, key: str) -> int:
        value = self.data[key]
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                return grp.getgrgid(value).gr_gid
            return grp.getgrnam(self.string(key)).gr_gid
        except (KeyError, OverflowError) as exc:
            raise self.error(key, f"no such group {shown(value)}") from exc

    def credentials(self) -> Credentials | None:
        """`user` (a name or uid) and `group` (default: the user's primary group)."""
        if "user" not in self.data:
            if "group" in self.data:
                raise self.error("group", "needs user too")
            return None
        uid, gid, name = self.user_id("user")
        if "group" in self.data:
            gid = self.group_id("group")
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
        return Credentials(uid, gid, name, group)

    def file_mode(self, key: str) -> int:
        """Permission bits: an integer (TOML 0o660) or a string of octal digits ("0660")."""
        value = self.data[key]
        if isinstance(value, str) and value and all(c in "01234567" for c in value):
            value = int(value, 8)
        # (no setuid, setgid or sticky bit: they mean nothing on a socket, and 660 written
        # in decimal, not 0o660, would come out as 0o1224)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
            what = f'must be permission bits such as 0o660 or "0660", got {shown(self.data[key])}'
            raise self.error(key, what)
        return value

    def address(self, key: str, base: str) -> Address:
        """An address; a unix socket path may be relative to `base` (the file's directory)."""
        text = self.string(key)
        scheme, sep, rest = text.partition("://")
        if sep and scheme in ("unix", "unixgram") and rest and not rest.startswith("/"):
            text = f"{scheme}://{os.path.normpath(os.path.join(base, rest))}"
        try:
            return addresses.parse(text)
        except ValueError as exc:
            raise self.error(key, f"malformed address {shown(text)}: {exc}") from exc

    def code(self, key: str) -> str:
        """`module:Class` (handler) or `module:callable` (server)."""
        spec = self.string(key)
        if not _HANDLER_SPEC.fullmatch(spec):
            shape = "module:Class" if key == "handler" else "module:callable"
            raise self.error(key, f"must be '{shape}', got {shown(spec)}")
        return spec

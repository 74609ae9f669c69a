"""Admission guards: who may connect, how often and how many at once.

A `Guard` answers, for one accepted connection (or received datagram), whether it may be
served, before it costs anything: the supervisor asks right after accept(), so a rejected
client never gets a fork, a thread or a handler. The checks, in order:

1. `allow` / `deny` (reason `denied`): CIDR networks for IP servers, the peer's uid or gid
   (SO_PEERCRED) for unix stream sockets; deny wins; an empty allow list allows everyone.
2. `max_per_source` (reason `per_source`): requests running now from the client's source.
3. `source_rate` (reason `source_rate`): a token bucket per source.
4. `rate` (reason `rate`): a token bucket for the whole server; only connections that passed
   the checks above take a token, so a flood from one source cannot empty it for the others.

A source is the client's network under `source_ipv4_prefix` / `source_ipv6_prefix` (/32 and
/64 by default: one IPv6 host usually has a whole /64), an IPv4-mapped IPv6 client counting as
its IPv4 address; on a unix socket, the peer's uid. Buckets refill continuously and never shut
the server for a fixed time (unlike xinetd's `cps`, or a systemd trigger limit that fails the
socket for good). Per-source state is bounded: idle sources are forgotten, and at most
MAX_SOURCES are tracked.

The concurrency counts live in a `Counter` the server owns, so that a reload that replaces the
guard (new limits) keeps counting the requests still running.
"""

import ipaddress
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Any

from supervisor.config import Limits, Peer, Rule
from supervisor.logs import Throttle, about, since

log = logging.getLogger("supervisor")

LOG_EVERY = 10.0  # seconds: at most one log line per server and reason, with a count since
PRUNE_AT = 1024  # per-source buckets kept before idle ones are dropped
MAX_SOURCES = 65536  # buckets kept at most: beyond, the oldest go (their sources start afresh)
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Source = Hashable


class Bucket:
    """A token bucket: `rate` tokens a second, at most `burst`, starting full."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> bool:
        """Take a token if there is one."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.last) * self.rate >= self.burst


def peer_credentials(request: socket.socket | int) -> tuple[int, int] | None:
    """The (uid, gid) of the process at the other end of a unix stream connection."""
    try:
        if isinstance(request, int):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=request)
            try:
                raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            finally:
                sock.detach()
        else:
            raw = request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    _, uid, gid = _PEERCRED.unpack(raw)
    return uid, gid


class Guard:
    """The checks of one server's `Limits`; see the module docstring."""

    def __init__(
        self,
        limits: Limits,
        unix: bool,
        running: Counter[Source],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.unix = unix
        self.running = running  # requests now running per source (the server's)
        self.clock = clock
        self.needs_peer = unix and bool(
            limits.allow or limits.deny or limits.max_per_source or limits.source_rate
        )
        self._rules = bool(limits.allow or limits.deny)
        self._per_source = bool(limits.max_per_source or limits.source_rate)
        self._v4 = (1 << 32) - (1 << (32 - limits.source_ipv4_prefix))
        self._v6 = (1 << 128) - (1 << (128 - limits.source_ipv6_prefix))
        now = clock()
        self._bucket = Bucket(limits.rate, limits.rate_burst, now) if limits.rate else None
        self._buckets: dict[Source, Bucket] = {}
        self._prune_at = PRUNE_AT

    def same(self, limits: Limits, unix: bool) -> bool:
        """Whether this guard enforces exactly these limits on this kind of address (its
        buckets can then stay across a reload)."""
        return unix == self.unix and _guarding(limits) == _guarding(self.limits)

    def admit(self, client_address: Any, peer: tuple[int, int] | None) -> tuple[str | None, Source]:
        """(None, source) if the request may run, counted as running until `release(source)`;
        (reason, source) if not."""
        limits = self.limits
        if self.unix:
            source: Source = None if peer is None else peer[0]
            if self._rules and not _peer_allowed(limits, peer):
                return "denied", source
        else:
            address = _ip(client_address)
            if self._rules and not _ip_allowed(limits, address):
                return "denied", None
            source = self._source(address) if self._per_source else None
        if source is not None:
            if limits.max_per_source and self.running[source] >= limits.max_per_source:
                return "per_source", source
            if limits.source_rate and not self._source_bucket(source).take(self.clock()):
                return "source_rate", source
        if self._bucket is not None and not self._bucket.take(self.clock()):
            return "rate", source
        if source is not None:
            self.running[source] += 1
        return None, source

    def _source(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> Source:
        if address is None:
            return None
        if address.version == 4:
            return 4, int(address) & self._v4
        return 6, int(address) & self._v6

    def _source_bucket(self, source: Source) -> Bucket:
        bucket = self._buckets.get(source)
        if bucket is None:
            now = self.clock()
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            limits = self.limits
            bucket = self._buckets[source] = Bucket(
                limits.source_rate, limits.source_rate_burst, now
            )
        return bucket

    def _prune(self, now: float) -> None:
        """Forget the sources whose bucket has refilled (a new one would be the same); if
        that is not enough to stay under MAX_SOURCES, the oldest buckets too (a flood from
        more sources than that gets some fresh bursts, but cannot exhaust memory)."""
        kept = [(key, b) for key, b in self._buckets.items() if not b.full(now)]
        self._buckets = dict(kept[-(MAX_SOURCES // 2) :] if len(kept) >= MAX_SOURCES else kept)
        self._prune_at = min(max(PRUNE_AT, 2 * len(self._buckets)), MAX_SOURCES)


def _guarding(limits: Limits) -> Limits:
    """The part of `limits` a Guard enforces."""
    return replace(
        limits,
        request_timeout=0.0,
        banner_fail=None,
        rlimit_as=0,
        rlimit_cpu=0,
        rlimit_nofile=0,
        nice=None,
    )


def release(running: Counter[Source], source: Source) -> None:
    """A request counted by `Guard.admit` is done."""
    if source is None:
        return
    left = running[source] - 1
    if left > 0:
        running[source] = left
    else:
        running.pop(source, None)


def _ip(client_address: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's IP address (IPv4-mapped IPv6 as IPv4), or None if there is none."""
    try:
        address = ipaddress.ip_address(client_address[0].partition("%")[0])
    except (TypeError, ValueError, IndexError, AttributeError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _ip_allowed(
    limits: Limits, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> bool:
    if address is None:
        return not limits.allow  # no address to match: only an open server lets it in
    if any(_contains(rule, address) for rule in limits.deny):
        return False
    return not limits.allow or any(_contains(rule, address) for rule in limits.allow)


def _contains(rule: Rule, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(rule, ipaddress.IPv4Network) and isinstance(address, ipaddress.IPv4Address):
        return address in rule
    if isinstance(rule, ipaddress.IPv6Network) and isinstance(address, ipaddress.IPv6Address):
        return address in rule
    return False


def _peer_allowed(limits: Limits, peer: tuple[int, int] | None) -> bool:
    if peer is None:
        return not limits.allow
    if any(_matches(rule, peer) for rule in limits.deny):
        return False
    return not limits.allow or any(_matches(rule, peer) for rule in limits.allow)


def _matches(rule: Rule, peer: tuple[int, int]) -> bool:
    if not isinstance(rule, Peer):
        return False
    return peer[0] == rule.id if rule.kind == "uid" else peer[1] == rule.id


class RejectionLog:
    """One warning per server and reason per LOG_EVERY seconds, with how many were not
    logged since: a flood of rejected clients must not become a flood of log lines."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._throttle = Throttle(LOG_EVERY, clock)

    def rejected(
        self, server: str, reason: str, client_address: Any, peer: tuple[int, int] | None = None
    ) -> None:
        left_out = self._throttle((server, reason))
        if left_out is None:
            return
        client = f"uid {peer[0]}" if peer is not None else client_address
        log.warning(
            "%s: rejected client %s (%s)%s",
            server,
            client,
            _TEXT[reason],
            since(left_out),
            extra=about(server, client),
        )


_TEXT = {
    "denied": "not allowed by allow/deny",
    "per_source": "max_per_source reached",
    "source_rate": "source_rate exceeded",
    "rate": "rate exceeded",
}

"""What happened on each server, and to the configuration: plain counters, kept in the loop.

The request path updates these (a few additions per request); metrics.py reads them when
Prometheus scrapes. Nothing here knows how they are exported.
"""

import bisect
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Seconds. Fork-per-request latencies start around a millisecond; long requests are minutes.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OUTCOMES = ("ok", "error", "signal", "killed")
# guards.py's, and a hosted server's verify_request (hosting.py)
REJECT_REASONS = ("denied", "per_source", "source_rate", "rate", "verify_request")


class Histogram:
    """Bucket counts and a sum: `observe` is one bisect and two additions."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[int]:
        """Cumulative counts, one per bucket bound and +Inf, as Prometheus exposes them."""
        return list(itertools.accumulate(self.counts))


@dataclass
class ServerStats:
    """What happened on one server since it was configured."""

    requests: int = 0
    errors: int = 0  # handler exceptions, and children that failed or died
    exits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    cpu_user: float = 0.0
    cpu_system: float = 0.0
    durations: Histogram = field(default_factory=Histogram)
    saturated_since: float | None = None  # monotonic time it reached max_children
    saturated_seconds: float = 0.0  # closed periods at max_children
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))

    def set_saturated(self, saturated: bool) -> None:
        """Record a change of state (cheap: called on every count change)."""
        if saturated and self.saturated_since is None:
            self.saturated_since = time.monotonic()
        elif not saturated and self.saturated_since is not None:
            self.saturated_seconds += time.monotonic() - self.saturated_since
            self.saturated_since = None

    def saturated_total(self) -> float:
        open_period = (
            0.0 if self.saturated_since is None else time.monotonic() - self.saturated_since
        )
        return self.saturated_seconds + open_period

    def child_exited(self, outcome: str, rusage: object, duration: float | None) -> None:
        """A child was reaped; `duration` is its request's (None for a prefork worker, whose
        requests are reported one by one through `request_done`)."""
        self.exits[outcome] += 1
        self.cpu_user += getattr(rusage, "ru_utime", 0.0)
        self.cpu_system += getattr(rusage, "ru_stime", 0.0)
        if duration is not None:
            self.durations.observe(duration)

    def handled(self, ok: bool, duration: float) -> None:
        """A request handled without a child of its own (inline, thread, a prefork worker)."""
        if not ok:
            self.errors += 1
        self.durations.observe(duration)

    def request_done(self, ok: bool, duration: float) -> None:
        """A request a prefork worker has finished (and reported through its pipe)."""
        self.requests += 1
        self.handled(ok, duration)


@dataclass
class ReloadStats:
    successes: int = 0
    failures: int = 0
    last_ok: bool = True
    last_success: float = field(default_factory=time.time)  # the start counts as one


# -- carried over an upgrade (upgrade.py): the old supervisor's counts, added to the new one's


def snapshot(stats: ServerStats) -> dict[str, Any]:
    """The counters of `stats` as JSON values."""
    return {
        "requests": stats.requests,
        "errors": stats.errors,
        "exits": dict(stats.exits),
        "cpu_user": stats.cpu_user,
        "cpu_system": stats.cpu_system,
        "durations": [list(stats.durations.counts), stats.durations.total, stats.durations.count],
        "saturated_seconds": stats.saturated_total(),
        "rejected": dict(stats.rejected),
    }


def add(stats: ServerStats, counted: Mapping[str, Any], before: Mapping[str, Any] | None) -> None:
    """Add to `stats` what `counted` has beyond `before` (None: all of it). Counters only
    grow, so the sum never goes back; a malformed entry raises ValueError or TypeError (the
    caller skips the server)."""
    base = before or {}
    counts, total, count = counted["durations"]
    old_counts, old_total, old_count = base.get("durations") or ([0] * len(counts), 0.0, 0)
    if len(counts) != len(stats.durations.counts) or len(old_counts) != len(counts):
        raise ValueError("another set of buckets")  # (before anything is added)

    def delta(key: str, kind: type = int) -> Any:
        return kind(counted.get(key, 0)) - kind(base.get(key, 0))

    stats.requests += delta("requests")
    stats.errors += delta("errors")
    stats.cpu_user += delta("cpu_user", float)
    stats.cpu_system += delta("cpu_system", float)
    stats.saturated_seconds += delta("saturated_seconds", float)
    for table, key in ((stats.exits, "exits"), (stats.rejected, "rejected")):
        now, then = counted.get(key) or {}, base.get(key) or {}
        for label in table:
            table[label] += int(now.get(label, 0)) - int(then.get(label, 0))
    for index, value in enumerate(counts):
        stats.durations.counts[index] += int(value) - int(old_counts[index])
    stats.durations.total += float(total) - float(old_total)
    stats.durations.count += int(count) - int(old_count)


@dataclass
class UpgradeStats:
    """Upgrades of the supervisor's own code, by result (carried over each one)."""

    ok: int = 0
    failed: int = 0

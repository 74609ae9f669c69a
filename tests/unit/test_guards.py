"""The guards' decisions (guards.py) with a fake clock: who is let in, and who counts as whom."""

import ipaddress
import logging
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from supervisor import guards
from supervisor.config import Limits, Peer
from supervisor.guards import Bucket, Guard, RejectionLog, Source


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock | None = None, unix: bool = False, **limits: Any) -> Guard:
    values: dict[str, Any] = {"rate_burst": 1 if limits.get("rate") else 0, **limits}
    if limits.get("source_rate") and "source_rate_burst" not in limits:
        values["source_rate_burst"] = 1
    return Guard(replace(Limits(), **values), unix, Counter(), clock or Clock())


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_deny_wins_over_allow_and_an_empty_allow_list_lets_everyone_in() -> None:
    rules = guard(allow=(net("10.0.0.0/8"),), deny=(net("10.1.0.0/16"),))
    assert rules.admit(("10.2.3.4", 1), None)[0] is None
    assert rules.admit(("10.1.3.4", 1), None)[0] == "denied"
    assert rules.admit(("192.0.2.1", 1), None)[0] == "denied"
    deny_only = guard(deny=(net("192.0.2.0/24"),))
    assert deny_only.admit(("198.51.100.1", 1), None)[0] is None
    assert deny_only.admit(("192.0.2.7", 1), None)[0] == "denied"


def test_ipv6_rules_and_ipv4_mapped_clients() -> None:
    rules = guard(allow=(net("2001:db8::/32"), net("127.0.0.0/8")))
    assert rules.admit(("2001:db8::1", 1, 0, 0), None)[0] is None
    assert rules.admit(("2001:db9::1", 1, 0, 0), None)[0] == "denied"
    # A dual-stack socket (one systemd passed in) shows IPv4 clients as ::ffff:a.b.c.d.
    assert rules.admit(("::ffff:127.0.0.1", 1, 0, 0), None)[0] is None
    assert rules.admit(("::ffff:192.0.2.1", 1, 0, 0), None)[0] == "denied"
    # A link-local client's scope does not stop the match.
    assert guard(deny=(net("fe80::/10"),)).admit(("fe80::1%eth0", 1, 0, 0), None)[0] == "denied"


def test_unix_peers_are_matched_by_uid_or_primary_gid() -> None:
    rules = guard(unix=True, allow=(Peer("uid", 1000, "uid:1000"), Peer("gid", 50, "gid:50")),
                  deny=(Peer("uid", 1001, "user:mallory"),))  # fmt: skip
    assert rules.admit("", (1000, 1000))[0] is None
    assert rules.admit("", (1002, 50))[0] is None
    assert rules.admit("", (1001, 50))[0] == "denied"  # deny wins
    assert rules.admit("", (1003, 1003))[0] == "denied"
    assert rules.admit("", None)[0] == "denied"  # no credentials: not on an allow list
    assert rules.needs_peer


@pytest.mark.parametrize(
    ("prefix", "a", "b", "same"),
    [
        (64, "2001:db8:1:2::1", "2001:db8:1:2:ffff::9", True),
        (64, "2001:db8:1:2::1", "2001:db8:1:3::1", False),
        (128, "2001:db8:1:2::1", "2001:db8:1:2::2", False),
        (48, "2001:db8:1:2::1", "2001:db8:1:3::1", True),
    ],
)
def test_ipv6_clients_are_grouped_by_prefix(prefix: int, a: str, b: str, same: bool) -> None:
    per_source = guard(max_per_source=1, source_ipv6_prefix=prefix)
    assert per_source.admit((a, 1, 0, 0), None)[0] is None
    assert per_source.admit((b, 1, 0, 0), None)[0] == ("per_source" if same else None)


def test_ipv4_clients_are_grouped_by_prefix_and_mapped_ones_count_as_ipv4() -> None:
    per_host = guard(max_per_source=1)
    assert per_host.admit(("192.0.2.1", 1), None) == (None, (4, 0xC0000201))
    assert per_host.admit(("::ffff:192.0.2.1", 1, 0, 0), None)[0] == "per_source"
    assert per_host.admit(("192.0.2.2", 1), None)[0] is None
    per_network = guard(max_per_source=1, source_ipv4_prefix=24)
    assert per_network.admit(("192.0.2.1", 1), None)[0] is None
    assert per_network.admit(("192.0.2.200", 1), None)[0] == "per_source"


def test_max_per_source_counts_until_released() -> None:
    per_source = guard(max_per_source=2)
    client = ("192.0.2.1", 1)
    first, second = (per_source.admit(client, None)[1] for _ in range(2))
    assert per_source.admit(client, None)[0] == "per_source"
    guards.release(per_source.running, first)
    assert per_source.admit(client, None)[0] is None
    assert per_source.running[first] == 2
    guards.release(per_source.running, second)
    assert per_source.running[first] == 1
    guards.release(per_source.running, first)
    assert not per_source.running  # no entry left for a source with nothing running
    guards.release(per_source.running, None)  # (a request admitted without a guard)


def test_rates_refill_continuously_up_to_the_burst() -> None:
    clock = Clock()
    rated = guard(clock, rate=2.0, rate_burst=3)
    assert [rated.admit(("192.0.2.1", 1), None)[0] for _ in range(4)] == [None] * 3 + ["rate"]
    clock.now += 0.5  # one token back
    assert [rated.admit(("192.0.2.9", 1), None)[0] for _ in range(2)] == [None, "rate"]
    clock.now += 3600  # never more than the burst
    assert [rated.admit(("192.0.2.1", 1), None)[0] for _ in range(4)] == [None] * 3 + ["rate"]


def test_one_flooding_source_does_not_take_the_servers_tokens() -> None:
    clock = Clock()
    both = guard(clock, rate=1.0, rate_burst=3, source_rate=1.0, source_rate_burst=1)
    assert both.admit(("192.0.2.1", 1), None)[0] is None
    for _ in range(100):
        assert both.admit(("192.0.2.1", 1), None)[0] == "source_rate"
    assert both.admit(("192.0.2.2", 1), None)[0] is None
    assert both.admit(("192.0.2.3", 1), None)[0] is None
    assert both.admit(("192.0.2.4", 1), None)[0] == "rate"


def test_idle_sources_are_forgotten() -> None:
    clock = Clock()
    per_source = guard(clock, source_rate=10.0, source_rate_burst=1)
    for host in range(guards.PRUNE_AT):
        assert per_source.admit((str(ipaddress.IPv4Address(0x0A000000 + host)), 1), None)[0] is None
    clock.now += 1  # every bucket has refilled: nothing to remember
    assert per_source.admit(("192.0.2.1", 1), None)[0] is None
    assert len(per_source._buckets) == 1
    # A source still empty is remembered: forgetting it would hand it a full bucket.
    assert per_source.admit(("192.0.2.1", 1), None)[0] == "source_rate"


def test_bucket_is_full_once_refilled() -> None:
    bucket = Bucket(rate=4.0, burst=2, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert not bucket.full(0.25)
    assert bucket.full(0.5)


def test_rejections_are_logged_once_per_server_and_reason_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    rejections = RejectionLog(clock)
    with caplog.at_level(logging.WARNING, logger="supervisor"):
        for _ in range(5):
            rejections.rejected("echo", "denied", "('192.0.2.1', 1)")
        rejections.rejected("echo", "rate", "('192.0.2.1', 2)")
        rejections.rejected("other", "denied", "", (1000, 1000))
        clock.now += guards.LOG_EVERY
        rejections.rejected("echo", "denied", "('192.0.2.1', 3)")
    assert caplog.messages == [
        "echo: rejected client ('192.0.2.1', 1) (not allowed by allow/deny)",
        "echo: rejected client ('192.0.2.1', 2) (rate exceeded)",
        "other: rejected client uid 1000 (not allowed by allow/deny)",
        "echo: rejected client ('192.0.2.1', 3) (not allowed by allow/deny); 4 more since the "
        "last such line",
    ]


def test_sources_are_hashable_keys() -> None:
    source: Source = guard(max_per_source=1).admit(("2001:db8::1", 1, 0, 0), None)[1]
    assert source == (6, 0x20010DB8 << 96)


def test_at_most_max_sources_buckets_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guards, "PRUNE_AT", 16)
    monkeypatch.setattr(guards, "MAX_SOURCES", 64)
    clock = Clock()
    per_source = guard(clock, source_rate=0.001, source_rate_burst=1)  # nothing refills
    for host in range(1000):
        assert per_source.admit((str(ipaddress.IPv4Address(0x0A000000 + host)), 1), None)[0] is None
        assert len(per_source._buckets) <= 64
    # The newest sources are still remembered (and still empty).
    assert per_source.admit(("10.0.3.231", 1), None)[0] == "source_rate"


def test_a_guard_is_kept_only_for_the_same_guarded_limits_and_address_kind() -> None:
    limits = replace(Limits(), max_per_source=1)
    kept = Guard(limits, False, Counter())
    assert kept.same(replace(limits, banner_fail="busy", request_timeout=5.0, nice=5), False)
    assert not kept.same(limits, True)  # tcp -> unix: sources are uids now
    assert not kept.same(replace(limits, max_per_source=2), False)

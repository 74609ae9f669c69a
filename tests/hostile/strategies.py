"""Hypothesis strategies for configuration files a user (or an attacker) might write: a valid
file with a few keys set to values of any TOML type and any size, keys that do not exist,
tables where values go and the reverse.

What is never generated, because the fuzzed commands really run: a handler other than the
listed ones (importing a module by a made-up name could run any module of the standard
library), and for `run` and reload a pidfile, log file or module path (they would create
files wherever the text says). Those keys are covered by the hand-written corpus.
"""

import os
from typing import Any

import tomli_w
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# SUPERVISOR_FUZZ_SCALE=N: N times the examples, drawn at random (a hunt, by hand); unset, the
# same bounded examples on every run, so that CI stays reproducible. No database in the tree.
SCALE = int(os.environ.get("SUPERVISOR_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        derandomize=SCALE == 1,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


HANDLERS = [
    "tests.handlers:LineEchoHandler",
    "tests.handlers:DatagramEchoHandler",
    "tests.handlers:FailingHandler",
    "supervisor_services.echo:EchoHandler",
    "tests.hostile.keyboard_interrupt:Handler",
    "tests.hostile.unprintable:Handler",
    "tests.hostile.huge_error:Handler",
    "tests.hostile.system_exit:Handler",
    "tests.handlers:NoSuchHandler",
    "no_such_module:Handler",
    "supervisor.config:Config",  # (not a handler)
]
SERVER_KEYS = [
    "address", "handler", "mode", "max_children", "backlog", "max_packet_size", "workers",
    "max_requests", "max_requests_jitter", "max_rss", "request_timeout", "max_per_source",
    "source_ipv4_prefix", "source_ipv6_prefix", "rate", "rate_burst", "source_rate",
    "source_rate_burst", "allow", "deny", "banner_fail", "rlimit_as", "rlimit_cpu",
    "rlimit_nofile", "nice", "user", "group", "socket_mode", "socket_owner", "socket_group",
    "reuse_port",
]  # fmt: skip
SUPERVISOR_LIMITS = [
    "shutdown_timeout", "kill_grace", "max_children", "log_level", "fork_server", "allow_root",
    "request_timeout", "max_per_source", "rate", "rate_burst", "source_rate",
    "source_rate_burst", "allow", "deny", "banner_fail", "rlimit_as", "rlimit_cpu",
    "rlimit_nofile", "nice",
]  # fmt: skip
SUPERVISOR_PATHS = ["pidfile", "log_file", "path", "user", "group"]
STRINGS = [
    "", "fork", "prefork", "thread", "inline", "debug", "tcp://127.0.0.1:0", "udp://127.0.0.1:0",
    "unix://run/fuzz.sock", "unixgram://run/fuzz.sock", "tcp://[::1]:0", "tcp://bad host:1",
    "10.0.0.0/8", "::/0", "uid:0", "user:nobody", "group:root", "nobody", "root", "0660",
    "\x00", "a\x00b", "x\n", "é", "\u202e", "0x" + "f" * 50, "9" * 400,
]  # fmt: skip
INTEGERS = [0, 1, -1, 7, 65535, 65536, 2**31, 2**32, 2**44, 2**63, 2**64, 16**3000, -(2**70)]


def _scalars(strings: bool = True) -> st.SearchStrategy[Any]:
    choices: list[st.SearchStrategy[Any]] = [
        st.booleans(),
        st.integers(),
        st.sampled_from(INTEGERS),
        st.floats(allow_nan=True, allow_infinity=True),
    ]
    if strings:
        choices += [st.sampled_from(STRINGS), st.text(max_size=40)]
    return st.one_of(choices)


def values(strings: bool = True) -> st.SearchStrategy[Any]:
    """Any TOML value, nested a little (arrays, inline tables)."""
    return st.recursive(
        _scalars(strings),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.sampled_from(["a", "b", "address"]), inner, max_size=3),
        ),
        max_leaves=6,
    )


ADDRESSES = [
    "tcp://127.0.0.1:0",
    "udp://127.0.0.1:0",
    "tcp://[::1]:0",
    "unix://run/fuzz.sock",
    "unixgram://run/fuzz.sock",
    "tcp://localhost:0",
]
# Values that make sense for a key, so that many files are accepted and really run.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "address": st.sampled_from(ADDRESSES),
    "mode": st.sampled_from(["fork", "prefork", "thread", "inline"]),
    "log_level": st.sampled_from(["debug", "info", "warning", "error"]),
    "allow": st.lists(st.sampled_from(["127.0.0.0/8", "::1", "uid:0", "10.0.0.0/8"]), max_size=2),
    "deny": st.lists(st.sampled_from(["192.0.2.1", "::/0", "gid:0", "user:nobody"]), max_size=2),
    "banner_fail": st.text(max_size=30),
    "user": st.sampled_from(["nobody", "root", 0, 65534]),
    "group": st.sampled_from(["nogroup", "root", 0]),
    "socket_mode": st.sampled_from([0o600, 0o660, "0666", "0700"]),
    "socket_owner": st.sampled_from(["nobody", "root"]),
    "socket_group": st.sampled_from(["nogroup", "root"]),
    "fork_server": st.booleans(),
    "allow_root": st.booleans(),
    "reuse_port": st.booleans(),
    "nice": st.integers(-20, 19),
    "rate": st.floats(0, 1000),
    "source_rate": st.floats(0, 1000),
    "request_timeout": st.floats(0, 100),
    "shutdown_timeout": st.floats(0, 3),
    "kill_grace": st.floats(0, 2),
}


def _value_for(key: str, wild: bool) -> st.SearchStrategy[Any]:
    if key == "handler":
        return st.sampled_from(HANDLERS if wild else HANDLERS[:4])
    plausible = PLAUSIBLE.get(key, st.integers(1, 300))
    return st.one_of(plausible, plausible, values()) if wild else plausible


@st.composite
def mutated(
    draw: st.DrawFn, base: dict[str, Any], supervisor_keys: list[str], wild: bool = True
) -> str:
    """`base` (a valid document) with 1 to 4 keys of its servers or [supervisor] table set to
    whatever, or removed, or unknown keys added; as TOML text. Not `wild`: known keys set to
    values that make sense for them (most such files are accepted, and really run)."""
    document = {table: dict(content) for table, content in base.items()}
    document["servers"] = {name: dict(server) for name, server in base["servers"].items()}
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["server", "server", "new server", "supervisor"]))
        if where == "supervisor":
            table = document.setdefault("supervisor", {})
            key = draw(st.sampled_from([*supervisor_keys, *(["nonsense"] if wild else [])]))
        else:
            servers = document["servers"]
            name = draw(st.sampled_from(["fuzz", "fuzz2"])) if where == "new server" else "fuzz"
            table = servers.setdefault(
                name, {"address": "tcp://127.0.0.1:0", "handler": HANDLERS[0]}
            )
            key = draw(
                st.sampled_from([*SERVER_KEYS, *(["nonsense", "max_chilren"] if wild else [])])
            )
        if wild and draw(st.integers(0, 9)) == 0:
            table.pop(key, None)
        else:
            table[key] = draw(_value_for(key, wild))
    return tomli_w.dumps(document)


@st.composite
def garbled(draw: st.DrawFn, text: str) -> str:
    """`text` with a few characters deleted, inserted or doubled: mostly TOML syntax errors."""
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "repeat"]))
        if edit == "delete":
            text = text[:at] + text[at + 1 :]
        elif edit == "insert":
            text = (
                text[:at]
                + draw(st.sampled_from(["[", "]", '"', "=", "\n", "\x00", "{"]))
                + text[at:]
            )
        else:
            text = text[:at] + text[at : at + 20] * draw(st.integers(2, 50)) + text[at:]
    return text

"""tests/configs.py: the tables it writes are the TOML the suites used to spell out."""

import tomllib

from tests.configs import ECHO, METRICS_ANY_PORT, TomlValue, server_table, supervisor_table


def test_a_server_table_is_address_handler_then_the_keys_in_order() -> None:
    assert server_table("echo", "LineEchoHandler", mode="thread", max_children=8) == (
        "\n[servers.echo]\n"
        'address = "tcp://127.0.0.1:0"\n'
        'handler = "tests.handlers:LineEchoHandler"\n'
        'mode = "thread"\n'
        "max_children = 8\n"
    )
    assert server_table("x", "pkg.mod:Handler", address="unix:///run/x.sock") == (
        '\n[servers.x]\naddress = "unix:///run/x.sock"\nhandler = "pkg.mod:Handler"\n'
    )


def test_values_read_back_as_given() -> None:
    keys: dict[str, TomlValue] = {
        "text": 'a "quoted" \\ back\tslash é',
        "integer": 4194304,
        "fraction": 0.001,
        "flag": False,
        "networks": ["127.0.0.0/8", "::1"],
    }
    text = supervisor_table(**keys) + server_table("s", "PidHandler", **keys)
    loaded = tomllib.loads(text)
    assert loaded["supervisor"] == keys
    assert loaded["servers"]["s"] == {
        "address": "tcp://127.0.0.1:0",
        "handler": "tests.handlers:PidHandler",
        **keys,
    }


def test_the_shared_tables() -> None:
    assert ECHO == (
        '\n[servers.echo]\naddress = "tcp://127.0.0.1:0"\n'
        'handler = "tests.handlers:BaseEchoHandler"\n'
    )
    assert METRICS_ANY_PORT == '\n[metrics]\naddress = "tcp://127.0.0.1:0"\n'

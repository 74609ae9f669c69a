"""config.parse, config.load and addresses.parse: every mistake is one exact line."""

import grp
import ipaddress
import os
import pwd
import re
import textwrap
import tomllib
from pathlib import Path

import pytest

from supervisor import addresses, config
from supervisor.addresses import Address
from supervisor.config import Credentials, Limits, Mode, Peer, SocketFile
from supervisor.errors import ConfigError, shown
from tests.configs import server_table

SOURCE = "etc/supervisor.toml"
ECHO = server_table("echo", "LineEchoHandler", address="tcp://127.0.0.1:7007")


def parse(toml: str, source: str = SOURCE) -> config.Config:
    return config.parse(tomllib.loads(textwrap.dedent(toml)), source)


def error_of(toml: str, source: str = SOURCE) -> str:
    """The one-line message parse() raises for `toml`."""
    with pytest.raises(ConfigError) as caught:
        parse(toml, source)
    message = str(caught.value)
    assert "\n" not in message
    return message


def server(address: str, extra: str = "", name: str = "echo") -> str:
    """A server table with `extra`, the TOML lines under test, written as they are."""
    return server_table(name, "BaseEchoHandler", address=address) + extra + "\n"


# --- happy path ---------------------------------------------------------------------------


def test_defaults() -> None:
    loaded = parse(ECHO)
    assert loaded.source == SOURCE
    assert loaded.supervisor == config.SupervisorConfig(
        shutdown_timeout=10.0, kill_grace=2.0, max_children=None, log_level="info", path=()
    )
    assert list(loaded.servers) == ["echo"]
    assert loaded.servers["echo"] == config.ServerConfig(
        name="echo",
        address=Address("tcp", host="127.0.0.1", port=7007),
        handler="tests.handlers:LineEchoHandler",
        mode=Mode.FORK,
        max_children=40,
        backlog=1024,
        max_packet_size=8192,
    )


def test_every_setting_is_read() -> None:
    loaded = parse(
        """
        [supervisor]
        shutdown_timeout = 3
        kill_grace = 0.5
        max_children = 7
        log_level = "debug"

        [servers.echo]
        address = "tcp://127.0.0.1:7007"
        handler = "tests.handlers:LineEchoHandler"
        mode = "thread"
        max_children = 3
        backlog = 65535

        [servers.echo-udp]
        address = "udp://127.0.0.1:7007"
        handler = "tests.handlers:DatagramEchoHandler"
        mode = "inline"
        max_packet_size = 1
        """
    )
    assert loaded.supervisor == config.SupervisorConfig(
        shutdown_timeout=3.0, kill_grace=0.5, max_children=7, log_level="debug", path=()
    )
    assert isinstance(loaded.supervisor.shutdown_timeout, float)
    echo = loaded.servers["echo"]
    assert (echo.mode, echo.max_children, echo.backlog) == (Mode.THREAD, 3, 65535)
    udp = loaded.servers["echo-udp"]
    assert (udp.mode, udp.max_packet_size) == (Mode.INLINE, 1)


def test_zero_durations_are_allowed() -> None:
    loaded = parse("[supervisor]\nshutdown_timeout = 0\nkill_grace = 0.0\n" + ECHO)
    assert (loaded.supervisor.shutdown_timeout, loaded.supervisor.kill_grace) == (0.0, 0.0)


def test_all_four_schemes() -> None:
    loaded = parse(
        server("tcp://localhost:1", name="a")
        + server("udp://0.0.0.0:2", name="b")
        + server("unix:///run/sv/a.sock", name="c")
        + server("unixgram:///run/sv/b.sock", name="d")
    )
    got = {name: server.address for name, server in loaded.servers.items()}
    assert got == {
        "a": Address("tcp", host="localhost", port=1),
        "b": Address("udp", host="0.0.0.0", port=2),
        "c": Address("unix", path="/run/sv/a.sock"),
        "d": Address("unixgram", path="/run/sv/b.sock"),
    }
    assert [a.is_stream for a in got.values()] == [True, False, True, False]
    assert [a.is_unix for a in got.values()] == [False, False, True, True]


def test_servers_keep_file_order() -> None:
    loaded = parse(server("tcp://127.0.0.1:0", name="zz") + server("tcp://127.0.0.1:0", name="aa"))
    assert list(loaded.servers) == ["zz", "aa"]


def test_server_names_may_hold_dots_dashes_and_underscores() -> None:
    loaded = parse(server("tcp://127.0.0.1:0", name='"echo.v2-a_b"'))
    assert list(loaded.servers) == ["echo.v2-a_b"]
    # The name inside the ServerConfig is the whole table name, not what follows the last dot.
    assert loaded.servers["echo.v2-a_b"].name == "echo.v2-a_b"


def test_supervisor_path_is_relative_to_the_config_directory(tmp_path: Path) -> None:
    source = str(tmp_path / "conf" / "supervisor.toml")
    loaded = parse('[supervisor]\npath = ["lib", "../shared", "/opt/abs"]\n' + ECHO, source)
    assert loaded.supervisor.path == (
        str(tmp_path / "conf" / "lib"),
        str(tmp_path / "conf" / "../shared"),
        "/opt/abs",
    )


def test_supervisor_path_of_a_relative_config_file_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = parse('[supervisor]\npath = ["handlers"]\n' + ECHO, "etc/supervisor.toml")
    assert loaded.supervisor.path == (os.path.join(str(tmp_path), "etc", "handlers"),)


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_text(ECHO)
    loaded = config.load(str(path))
    assert loaded.source == str(path)
    assert list(loaded.servers) == ["echo"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("tcp://127.0.0.1:0", "tcp://127.0.0.1:0"),
        ("tcp://127.0.0.1:7007", "udp://127.0.0.1:7007"),
        ("tcp://127.0.0.1:7007", "tcp://127.0.0.2:7007"),
        ("unix:///run/a.sock", "unix:///run/b.sock"),
    ],
)
def test_addresses_that_may_coexist(first: str, second: str) -> None:
    loaded = parse(server(first, name="a") + server(second, name="b"))
    assert [str(s.address) for s in loaded.servers.values()] == [first, second]


# --- addresses.parse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://127.0.0.1:7007", Address("tcp", host="127.0.0.1", port=7007)),
        ("udp://example.org:53", Address("udp", host="example.org", port=53)),
        ("tcp://[::1]:7007", Address("tcp", host="::1", port=7007)),
        ("udp://[fe80::1:2]:0", Address("udp", host="fe80::1:2", port=0)),
        ("tcp://[::]:65535", Address("tcp", host="::", port=65535)),
        ("unix:///run/echo.sock", Address("unix", path="/run/echo.sock")),
        ("unixgram:///run/log.sock", Address("unixgram", path="/run/log.sock")),
    ],
)
def test_address_parse(text: str, expected: Address) -> None:
    address = addresses.parse(text)
    assert address == expected
    assert str(address) == text


def test_ipv6_address_properties() -> None:
    address = addresses.parse("tcp://[2001:db8::7]:80")
    assert (address.host, address.port, address.is_stream, address.is_unix) == (
        "2001:db8::7",
        80,
        True,
        False,
    )


def test_unix_path_at_the_length_limit() -> None:
    path = "/" + "a" * (addresses.UNIX_PATH_MAX - 1)
    assert addresses.parse(f"unix://{path}").path == path


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1:7007", "expected SCHEME://..., for example tcp://127.0.0.1:7007"),
        ("sctp://127.0.0.1:1", "unknown scheme 'sctp', expected one of tcp, udp, unix, unixgram"),
        ("tcp://127.0.0.1", "expected HOST:PORT"),
        ("tcp://127.0.0.1:", "invalid port ''"),
        ("tcp://127.0.0.1:http", "invalid port 'http'"),
        ("tcp://127.0.0.1:-1", "invalid port '-1'"),
        ("tcp://127.0.0.1:65536", "port 65536 is out of range 0-65535"),
        ("tcp://::1:7007", "an IPv6 address goes in brackets, as in tcp://[::1]:7007"),
        ("tcp://[::1]7007", "expected [IPv6]:PORT"),
        ("tcp://[nope]:1", "invalid IPv6 address 'nope'"),
        ("tcp://bad_host:1", "invalid host 'bad_host'"),
        ("tcp://:7007", "invalid host ''"),
        (
            "unix://run/echo.sock",
            "a unix socket path must be absolute, as in unix:///run/echo.sock",
        ),
        ("unix:///run/", "a unix socket path must name a file, not a directory"),
        ("unix:///" + "a" * 107, "a unix socket path is at most 107 bytes long"),
    ],
)
def test_address_parse_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        addresses.parse(text)


# --- configuration errors -----------------------------------------------------------------


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_text('[servers.echo]\naddress = "tcp://127.0.0.1:0"\nhandler = \n')
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    assert str(caught.value) == f"{path}: TOML syntax error: Invalid value (at line 3, column 11)"
    assert isinstance(caught.value.__cause__, tomllib.TOMLDecodeError)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    assert str(caught.value) == f"{path}: cannot read the file (No such file or directory)"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(str(tmp_path))
    assert str(caught.value) == f"{tmp_path}: not a regular file (a directory)"


def test_a_file_that_is_not_utf8_is_one_config_error(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_bytes(b"[servers.echo]\naddress = '\xff'\n")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[supervisor]\nshutdown_timout = 1\n" + ECHO,
            "supervisor.shutdown_timout: unknown key (did you mean 'shutdown_timeout'?)",
        ),
        (
            "[supervisor]\nloglevel = 'info'\n" + ECHO,
            "supervisor.loglevel: unknown key (did you mean 'log_level'?)",
        ),
        ("[supervisor]\nzzzz = 1\n" + ECHO, "supervisor.zzzz: unknown key"),
        (ECHO + "mdoe = 'fork'\n", "servers.echo.mdoe: unknown key (did you mean 'mode'?)"),
        (
            ECHO + "max_child = 3\n",
            "servers.echo.max_child: unknown key (did you mean 'max_children'?)",
        ),
        ("server = 1\n" + ECHO, "server: unknown key (did you mean 'servers'?)"),
        ("[supervisors]\n" + ECHO, "supervisors: unknown key (did you mean 'supervisor'?)"),
        ("[logging]\n" + ECHO, "logging: unknown key"),
    ],
)
def test_unknown_keys(toml: str, message: str) -> None:
    assert error_of(toml) == f"{SOURCE}: {message}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "max_children = true",
            "max_children: must be an integer from 1 to 4194304, got boolean True",
        ),
        (
            "max_children = '3'",
            "max_children: must be an integer from 1 to 4194304, got string '3'",
        ),
        ("max_children = 1.5", "max_children: must be an integer from 1 to 4194304, got float 1.5"),
        ("backlog = false", "backlog: must be an integer from 1 to 65535, got boolean False"),
        ("backlog = [1]", "backlog: must be an integer from 1 to 65535, got array [1]"),
        ("mode = 1", "mode: must be a string, got integer 1"),
        ("handler = 3", "handler: must be a string, got integer 3"),
        ("address = { port = 1 }", "address: must be a string, got table {'port': 1}"),
    ],
)
def test_wrong_types_in_a_server(extra: str, message: str) -> None:
    # A repeated key is a TOML error, so the server table is written whole here.
    lines = {"address": '"tcp://127.0.0.1:0"', "handler": '"tests.handlers:BaseEchoHandler"'}
    key, _, value = extra.partition(" = ")
    lines[key] = value
    toml = "[servers.echo]\n" + "".join(f"{k} = {v}\n" for k, v in lines.items())
    assert error_of(toml) == f"{SOURCE}: servers.echo.{message}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "shutdown_timeout = true",
            "shutdown_timeout: must be a number from 0 to 86400, got boolean True",
        ),
        (
            "shutdown_timeout = '10'",
            "shutdown_timeout: must be a number from 0 to 86400, got string '10'",
        ),
        ("kill_grace = [2]", "kill_grace: must be a number from 0 to 86400, got array [2]"),
        (
            "max_children = true",
            "max_children: must be an integer from 1 to 4194304, got boolean True",
        ),
        ("max_children = 2.0", "max_children: must be an integer from 1 to 4194304, got float 2.0"),
        ("log_level = 10", "log_level: must be a string, got integer 10"),
        ("path = 'lib'", "path: must be an array of strings, got string 'lib'"),
        ("path = ['lib', 1]", "path: must be an array of strings"),
    ],
)
def test_wrong_types_in_supervisor(extra: str, message: str) -> None:
    assert error_of(f"[supervisor]\n{extra}\n" + ECHO) == f"{SOURCE}: supervisor.{message}"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("supervisor = 1\n" + ECHO, "supervisor: must be a table, got integer"),
        ("servers = 'echo'\n", "servers: must be a table, got string"),
        ("[servers]\necho = 1\n", "servers.echo: must be a table, got integer"),
    ],
)
def test_tables_that_are_not_tables(toml: str, message: str) -> None:
    assert error_of(toml) == f"{SOURCE}: {message}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("max_children = 0", "max_children: must be an integer from 1 to 4194304, got 0"),
        ("max_children = -5", "max_children: must be an integer from 1 to 4194304, got -5"),
        ("backlog = 0", "backlog: must be an integer from 1 to 65535, got 0"),
        ("backlog = 65536", "backlog: must be an integer from 1 to 65535, got 65536"),
        ("mode = 'forking'", "mode: must be one of fork, prefork, thread, inline, got 'forking'"),
        ("mode = 'FORK'", "mode: must be one of fork, prefork, thread, inline, got 'FORK'"),
    ],
)
def test_out_of_range_server_values(extra: str, message: str) -> None:
    toml = server("tcp://127.0.0.1:0", extra)
    assert error_of(toml) == f"{SOURCE}: servers.echo.{message}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("max_packet_size = 0", "max_packet_size: must be an integer from 1 to 65535, got 0"),
        (
            "max_packet_size = 65536",
            "max_packet_size: must be an integer from 1 to 65535, got 65536",
        ),
    ],
)
def test_out_of_range_datagram_values(extra: str, message: str) -> None:
    toml = server("udp://127.0.0.1:0", extra)
    assert error_of(toml) == f"{SOURCE}: servers.echo.{message}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("shutdown_timeout = -1", "shutdown_timeout: must be a number from 0 to 86400, got -1"),
        ("kill_grace = -0.5", "kill_grace: must be a number from 0 to 86400, got -0.5"),
        ("kill_grace = inf", "kill_grace: must be a number from 0 to 86400, got inf"),
        ("shutdown_timeout = nan", "shutdown_timeout: must be a number from 0 to 86400, got nan"),
        ("max_children = 0", "max_children: must be an integer from 1 to 4194304, got 0"),
        (
            "log_level = 'verbose'",
            "log_level: must be one of debug, info, warning, error, got 'verbose'",
        ),
    ],
)
def test_out_of_range_supervisor_values(extra: str, message: str) -> None:
    assert error_of(f"[supervisor]\n{extra}\n" + ECHO) == f"{SOURCE}: supervisor.{message}"


def test_log_format_is_text_unless_json_is_asked() -> None:
    assert parse(ECHO).supervisor.log_format == "text"
    assert parse('[supervisor]\nlog_format = "json"\n' + ECHO).supervisor.log_format == "json"
    assert error_of('[supervisor]\nlog_format = "xml"\n' + ECHO) == (
        f"{SOURCE}: supervisor.log_format: must be one of text, json, got 'xml'"
    )
    assert error_of("[supervisor]\nlog_format = 1\n" + ECHO) == (
        f"{SOURCE}: supervisor.log_format: must be a string, got integer 1"
    )


def test_a_huge_integer_duration_is_one_config_error() -> None:
    toml = f"[supervisor]\nshutdown_timeout = 1{'0' * 400}\n" + ECHO
    with pytest.raises(ConfigError) as caught:
        parse(toml)
    message = str(caught.value)
    assert message.startswith(
        f"{SOURCE}: supervisor.shutdown_timeout: must be a number from 0 to 86400, got "
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("tcp://127.0.0.1", "expected HOST:PORT"),
        ("tcp://127.0.0.1:echo", "invalid port 'echo'"),
        ("udp://127.0.0.1:70000", "port 70000 is out of range 0-65535"),
        ("http://127.0.0.1:80", "unknown scheme 'http', expected one of tcp, udp, unix, unixgram"),
        ("tcp://::1:7007", "an IPv6 address goes in brackets, as in tcp://[::1]:7007"),
        ("unixgram:///" + "x" * 200, "a unix socket path is at most 107 bytes long"),
    ],
)
def test_malformed_addresses(address: str, reason: str) -> None:
    assert error_of(server(address)) == (
        f"{SOURCE}: servers.echo.address: malformed address {shown(address)}: {reason}"
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("tcp://127.0.0.1:7007", "tcp://127.0.0.1:7007"),
        ("tcp://LocalHost:7007", "tcp://localhost:7007"),
        ("udp://[::1]:53", "udp://[::1]:53"),
        ("unix:///run/sv/echo.sock", "unixgram:///run/sv/echo.sock"),
        ("unix:///run/sv/echo.sock", "unix:///run//sv/../sv/echo.sock"),
        ("tcp://0.0.0.0:7007", "tcp://127.0.0.1:7007"),
        ("tcp://127.0.0.2:7007", "tcp://0.0.0.0:7007"),
        ("udp://[::]:53", "udp://[::1]:53"),
        ("tcp://[::1]:7007", "tcp://[0:0::1]:7007"),
    ],
)
def test_two_servers_on_one_address(first: str, second: str) -> None:
    toml = server(first, name="one") + server("tcp://127.0.0.1:0", name="two")
    toml += server(second, name="three")
    assert error_of(toml) == (
        f"{SOURCE}: servers.three.address: {second} is already used by servers.one ({first})"
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("tcp://0.0.0.0:7007", "tcp://[::1]:7007"),  # IPv6 sockets are bound IPV6_V6ONLY
        ("tcp://[::]:7007", "tcp://127.0.0.1:7007"),
        ("tcp://127.0.0.1:7007", "udp://127.0.0.1:7007"),
        ("tcp://127.0.0.1:7007", "tcp://127.0.0.2:7007"),
        ("tcp://127.0.0.1:0", "tcp://0.0.0.0:0"),
    ],
)
def test_addresses_that_do_not_overlap(first: str, second: str) -> None:
    toml = server(first, name="one") + server(second, name="two")
    assert set(parse(toml).servers) == {"one", "two"}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[servers.echo]\nhandler = "tests.handlers:BaseEchoHandler"\n',
            "servers.echo.address: is required",
        ),
        (
            '[servers.echo]\naddress = "tcp://127.0.0.1:0"\n',
            "servers.echo.handler: is required, or else server: give either "
            "handler = 'module:Class' (a request handler class) or "
            "server = 'module:callable' (a function that returns a socketserver server)",
        ),
        ("", "servers: at least one server is required"),
        ("[supervisor]\n[servers]\n", "servers: at least one server is required"),
    ],
)
def test_missing_required_keys(toml: str, message: str) -> None:
    assert error_of(toml) == f"{SOURCE}: {message}"


def test_backlog_on_a_datagram_server() -> None:
    assert error_of(server("udp://127.0.0.1:0", "backlog = 16")) == (
        f"{SOURCE}: servers.echo.backlog: only applies to stream addresses (tcp://, unix://)"
    )


def test_backlog_on_a_unixgram_server() -> None:
    assert error_of(server("unixgram:///run/a.sock", "backlog = 16")) == (
        f"{SOURCE}: servers.echo.backlog: only applies to stream addresses (tcp://, unix://)"
    )


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:0", "unix:///run/a.sock"])
def test_max_packet_size_on_a_stream_server(address: str) -> None:
    assert error_of(server(address, "max_packet_size = 512")) == (
        f"{SOURCE}: servers.echo.max_packet_size: only applies to datagram addresses"
    )


@pytest.mark.parametrize(
    ("address", "extra", "expected"),
    [
        ("tcp://127.0.0.1:7007", "reuse_port = true", True),
        ("udp://[::1]:7007", "reuse_port = true", True),
        ("tcp://127.0.0.1:7007", "reuse_port = false", False),
        ("udp://127.0.0.1:7007", "", False),
    ],
)
def test_reuse_port(address: str, extra: str, expected: bool) -> None:
    assert parse(server(address, extra)).servers["echo"].reuse_port is expected


@pytest.mark.parametrize("address", ["unix:///run/a.sock", "unixgram:///run/a.sock"])
@pytest.mark.parametrize("value", ["true", "false"])
def test_reuse_port_on_a_unix_server(address: str, value: str) -> None:
    assert error_of(server(address, f"reuse_port = {value}")) == (
        f"{SOURCE}: servers.echo.reuse_port: only applies to tcp:// and udp:// addresses"
    )


@pytest.mark.parametrize(
    ("value", "got"),
    [
        ("1", "integer 1"),
        ('"yes"', "string 'yes'"),
        ('"true"', "string 'true'"),
        ("[]", "array []"),
    ],
)
def test_reuse_port_must_be_a_boolean(value: str, got: str) -> None:
    assert error_of(server("tcp://127.0.0.1:7007", f"reuse_port = {value}")) == (
        f"{SOURCE}: servers.echo.reuse_port: must be true or false, got {got}"
    )


def test_reuse_port_misspelled() -> None:
    assert error_of(server("tcp://127.0.0.1:7007", "reuseport = true")) == (
        f"{SOURCE}: servers.echo.reuseport: unknown key (did you mean 'reuse_port'?)"
    )


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ('"bad name"', '"bad name"'),  # shown as TOML writes the key: quoted unless bare
        ('"x/y"', '"x/y"'),
        ('"-echo"', "-echo"),
        ('"' + "a" * 65 + '"', "a" * 65),
        ('"bad\\nSTOPPING=1"', '"bad\\nSTOPPING=1"'),  # a newline stays escaped: one line
    ],
)
def test_bad_server_names(name: str, shown: str) -> None:
    assert error_of(server("tcp://127.0.0.1:0", name=name)) == (
        f"{SOURCE}: servers.{shown}: a server name is 1-64 letters, digits, '_', '.' or '-'"
    )


def test_a_64_character_server_name_is_accepted() -> None:
    name = "a" * 64
    assert list(parse(server("tcp://127.0.0.1:0", name=name)).servers) == [name]


@pytest.mark.parametrize(
    "spec",
    [
        "tests.handlers",
        "tests.handlers.LineEchoHandler",
        ":LineEchoHandler",
        "tests.handlers:",
        "a:b:c",
        "1mod:C",
        "mod:C-D",
    ],
)
def test_bad_handler_specs(spec: str) -> None:
    toml = f'[servers.echo]\naddress = "tcp://127.0.0.1:0"\nhandler = "{spec}"\n'
    assert error_of(toml) == f"{SOURCE}: servers.echo.handler: must be 'module:Class', got {spec!r}"


def test_the_first_problem_is_reported_with_its_own_source() -> None:
    message = error_of(server("tcp://127.0.0.1:0", "max_children = 0"), source="/srv/x.toml")
    assert (
        message
        == "/srv/x.toml: servers.echo.max_children: must be an integer from 1 to 4194304, got 0"
    )


# --- prefork --------------------------------------------------------------------------------


def test_prefork_settings() -> None:
    server = parse(
        ECHO + 'mode = "prefork"\nworkers = 3\nmax_requests = 1000\nmax_rss = 256\n', SOURCE
    ).servers["echo"]
    assert (server.mode, server.workers, server.max_requests, server.max_rss) == (
        Mode.PREFORK,
        3,
        1000,
        256,
    )
    assert server.max_requests_jitter == 100  # a tenth of max_requests unless given


def test_prefork_workers_default_to_the_cpus_within_max_children() -> None:
    server = parse(ECHO + 'mode = "prefork"\nmax_children = 1\n', SOURCE).servers["echo"]
    assert server.workers == 1
    assert parse(ECHO + 'mode = "prefork"\n', SOURCE).servers["echo"].workers == min(
        len(os.sched_getaffinity(0)), 40
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (ECHO + "workers = 2\n", 'servers.echo.workers: only applies to mode = "prefork"'),
        (
            ECHO + 'mode = "thread"\nmax_requests = 2\n',
            'servers.echo.max_requests: only applies to mode = "prefork"',
        ),
        (
            ECHO + 'mode = "prefork"\nworkers = 5\nmax_children = 4\n',
            "servers.echo.workers: must be at most max_children (4), got 5",
        ),
        (
            ECHO + 'mode = "prefork"\nworkers = 0\n',
            "servers.echo.workers: must be an integer from 1 to 1024, got 0",
        ),
        (
            ECHO + 'mode = "prefork"\nmax_rss = -1\n',
            "servers.echo.max_rss: must be an integer from 0 to 1099511627776, got -1",
        ),
        (
            ECHO.replace("tcp://", "udp://") + 'mode = "prefork"\n',
            "servers.echo.mode: prefork needs a stream address (tcp://, unix://)",
        ),
    ],
)
def test_prefork_errors(toml: str, message: str) -> None:
    assert error_of(toml) == f"{SOURCE}: {message}"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[supervisor]\nmax_children = 3\n" + ECHO + 'mode = "prefork"\nworkers = 3\n'
            "[servers.other]\naddress = 'tcp://127.0.0.1:7008'\nhandler = 'x:Y'\n",
            "supervisor.max_children: 3 is too small for the prefork servers' 3 workers and "
            "leave room for the fork and thread servers",
        ),
        (
            "[supervisor]\nmax_children = 2\n" + ECHO + 'mode = "prefork"\nworkers = 3\n',
            "supervisor.max_children: 2 is too small for the prefork servers' 3 workers",
        ),
    ],
)
def test_prefork_workers_and_the_global_cap(toml: str, message: str) -> None:
    assert error_of(toml) == f"{SOURCE}: {message}"
    # Exactly the cap is fine when nothing else needs room.
    assert parse("[supervisor]\nmax_children = 3\n" + ECHO + 'mode = "prefork"\nworkers = 3\n')


# --- guards, child limits and privileges ------------------------------------------------------

TCP = "tcp://127.0.0.1:7007"
UDP = "udp://127.0.0.1:7007"
UNIX = "unix:///run/sv/echo.sock"
UNIXGRAM = "unixgram:///run/sv/log.sock"
NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrnam("nogroup")


def limits_of(toml: str, name: str = "echo") -> Limits:
    return parse(toml).servers[name].limits


def test_no_limit_keys_means_no_limits_and_no_credentials() -> None:
    loaded = parse(server(TCP) + server(UNIX, name="local"))
    assert loaded.supervisor.limits == Limits()
    assert (loaded.supervisor.credentials, loaded.supervisor.allow_root) == (None, False)
    for each in loaded.servers.values():
        assert each.limits == Limits()
        assert each.credentials is None
        assert each.socket_file == SocketFile(mode=None, uid=-1, gid=-1)
        assert not each.limits.guarded
        assert not each.limits.child_limits


def test_every_limit_is_read_from_a_server_table() -> None:
    limits = limits_of(
        server(
            TCP,
            """
            request_timeout = 30
            max_per_source = 4
            source_ipv4_prefix = 24
            source_ipv6_prefix = 48
            rate = 100.5
            rate_burst = 200
            source_rate = 2
            source_rate_burst = 5
            allow = ["10.0.0.0/8"]
            deny = ["10.0.0.7"]
            banner_fail = "busy\\r\\n"
            rlimit_as = 512
            rlimit_cpu = 60
            rlimit_nofile = 1024
            nice = 10
            """,
        )
    )
    assert limits == Limits(
        request_timeout=30.0,
        max_per_source=4,
        source_ipv4_prefix=24,
        source_ipv6_prefix=48,
        rate=100.5,
        rate_burst=200,
        source_rate=2.0,
        source_rate_burst=5,
        allow=(ipaddress.IPv4Network("10.0.0.0/8"),),
        deny=(ipaddress.IPv4Network("10.0.0.7/32"),),
        banner_fail="busy\r\n",
        rlimit_as=512,
        rlimit_cpu=60,
        rlimit_nofile=1024,
        nice=10,
    )
    assert isinstance(limits.request_timeout, float)
    assert (limits.guarded, limits.child_limits) == (True, True)


SUPERVISOR_LIMITS = """
[supervisor]
request_timeout = 30
max_per_source = 4
rate = 10
rate_burst = 20
source_rate = 2
allow = ["10.0.0.0/8"]
banner_fail = "busy"
rlimit_cpu = 60
nice = 5
"""


def test_servers_inherit_the_supervisor_limits() -> None:
    limits = limits_of(SUPERVISOR_LIMITS + server(TCP))
    assert limits == Limits(
        request_timeout=30.0,
        max_per_source=4,
        rate=10.0,
        rate_burst=20,
        source_rate=2.0,
        source_rate_burst=2,  # a second's worth, resolved for the server
        allow=(ipaddress.IPv4Network("10.0.0.0/8"),),
        banner_fail="busy",
        rlimit_cpu=60,
        nice=5,
    )


def test_a_server_overrides_the_supervisor_limits_even_back_to_zero() -> None:
    extra = """
    request_timeout = 0
    max_per_source = 0
    rate = 0
    source_rate = 7
    allow = []
    rlimit_cpu = 0
    rlimit_nofile = 64
    nice = 0
    """
    limits = limits_of(SUPERVISOR_LIMITS + server(TCP, extra))
    assert limits == Limits(
        source_rate=7.0,
        source_rate_burst=7,
        banner_fail="busy",  # the one key not overridden
        rlimit_nofile=64,
        nice=0,  # 0 is a niceness to set, unlike None
    )
    assert limits.rate_burst == 0  # no rate, no burst: the inherited 20 is dropped too


def test_inherited_rules_are_kept_only_where_they_apply() -> None:
    toml = (
        """
        [supervisor]
        allow = ["10.0.0.0/8", "uid:0", "2001:db8::/32", "group:root"]
        deny = ["10.0.0.7", "gid:65534"]
        max_per_source = 3
        source_rate = 1
        banner_fail = "busy"
        """
        + server(TCP, name="tcp")
        + server(UDP, name="udp")
        + server(UNIX, name="unix")
        + server(UNIXGRAM, name="unixgram")
    )
    servers = parse(toml).servers
    ip_allow = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    ip_deny = (ipaddress.ip_network("10.0.0.7/32"),)
    for name in ("tcp", "udp"):
        assert (servers[name].limits.allow, servers[name].limits.deny) == (ip_allow, ip_deny)
    unix = servers["unix"].limits
    assert unix.allow == (Peer("uid", 0, "uid:0"), Peer("gid", 0, "group:root"))
    assert unix.deny == (Peer("gid", 65534, "gid:65534"),)
    gram = servers["unixgram"].limits
    assert (gram.allow, gram.deny) == ((), ())
    # A unix datagram socket does not say who sent a datagram: no per-source limits either.
    assert (gram.max_per_source, gram.source_rate, gram.source_rate_burst) == (0, 0, 0)
    assert (servers["unix"].limits.max_per_source, servers["unix"].limits.source_rate) == (3, 1)
    # banner_fail is for stream clients only.
    assert [s.limits.banner_fail for s in servers.values()] == ["busy", None, "busy", None]


@pytest.mark.parametrize(
    ("address", "extra", "message"),
    [
        (
            TCP,
            'allow = ["10.0.0.0/8", "uid:0"]',
            "allow: 'uid:0' is a peer rule: those apply to unix sockets only",
        ),
        (
            UDP,
            'deny = ["user:root"]',
            "deny: 'user:root' is a peer rule: those apply to unix sockets only",
        ),
        (
            UNIX,
            'deny = ["gid:0", "10.0.0.0/8"]',
            "deny: '10.0.0.0/8' is not a peer rule (uid:N, gid:N, user:NAME, group:NAME) "
            "for a unix socket",
        ),
        (
            UNIXGRAM,
            'allow = ["uid:0"]',
            "allow: 'uid:0' cannot apply: a unix datagram socket does not tell who sent a datagram",
        ),
        (
            UNIXGRAM,
            'deny = ["::1"]',  # shown as ipaddress writes it, not as written
            "deny: '::1/128' cannot apply: a unix datagram socket does not tell who sent a "
            "datagram",
        ),
        (
            UNIXGRAM,
            "max_per_source = 2",
            "max_per_source: a unix datagram socket does not tell who sent a datagram",
        ),
        (
            UNIXGRAM,
            "source_rate = 1",
            "source_rate: a unix datagram socket does not tell who sent a datagram",
        ),
        (
            UDP,
            'banner_fail = "busy"',
            "banner_fail: only applies to stream addresses (tcp://, unix://)",
        ),
        (
            UNIXGRAM,
            'banner_fail = "busy"',
            "banner_fail: only applies to stream addresses (tcp://, unix://)",
        ),
    ],
)
def test_limits_that_do_not_fit_the_address_are_errors_in_the_server_table(
    address: str, extra: str, message: str
) -> None:
    assert error_of(server(address, extra)) == f"{SOURCE}: servers.echo.{message}"


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0.25, 1), (1, 1), (2.5, 3), (10, 10), (1e6, 1_000_000)],
)
def test_a_rate_gets_a_burst_of_one_seconds_worth(rate: float, burst: int) -> None:
    limits = limits_of(server(TCP, f"rate = {rate}\nsource_rate = {rate}"))
    assert (limits.rate_burst, limits.source_rate_burst) == (burst, burst)


def test_a_given_burst_is_kept() -> None:
    limits = limits_of(
        server(TCP, "rate = 10\nrate_burst = 3\nsource_rate = 1\nsource_rate_burst = 50")
    )
    assert (limits.rate_burst, limits.source_rate_burst) == (3, 50)


def test_an_inherited_rate_gets_its_burst_in_each_server() -> None:
    loaded = parse("[supervisor]\nrate = 2.5\n" + server(TCP) + server(UNIX, "rate = 7", "b"))
    assert loaded.supervisor.limits.rate_burst == 0  # resolved per server, not here
    assert loaded.servers["echo"].limits.rate_burst == 3
    assert loaded.servers["b"].limits.rate_burst == 7
    # A server may size the burst of a rate it inherits.
    assert limits_of("[supervisor]\nrate = 2.5\n" + server(TCP, "rate_burst = 9")).rate_burst == 9


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            server(TCP, "rate_burst = 5"),
            "servers.echo.rate_burst: needs rate (connections per second)",
        ),
        (
            server(TCP, "rate = 0\nsource_rate_burst = 5"),
            "servers.echo.source_rate_burst: needs source_rate (connections per second)",
        ),
        (
            "[supervisor]\nrate = 3\n" + server(TCP, "rate = 0\nrate_burst = 5"),
            "servers.echo.rate_burst: needs rate (connections per second)",
        ),
        (
            "[supervisor]\nrate_burst = 5\n" + ECHO,
            "supervisor.rate_burst: needs rate (connections per second)",
        ),
        (
            server(TCP, "rate = 1\nrate_burst = 0"),
            "servers.echo.rate_burst: must be an integer from 1 to 2147483647, got 0",
        ),
    ],
)
def test_burst_errors(toml: str, message: str) -> None:
    assert error_of(toml) == f"{SOURCE}: {message}"


@pytest.mark.parametrize(
    ("entry", "network"),
    [
        ("10.0.0.0/8", ipaddress.IPv4Network("10.0.0.0/8")),
        ("192.0.2.7", ipaddress.IPv4Network("192.0.2.7/32")),
        ("0.0.0.0/0", ipaddress.IPv4Network("0.0.0.0/0")),
        ("2001:db8::/32", ipaddress.IPv6Network("2001:db8::/32")),
        ("2001:db8::1", ipaddress.IPv6Network("2001:db8::1/128")),
        ("::1", ipaddress.IPv6Network("::1/128")),
    ],
)
def test_network_rules(entry: str, network: config.Network) -> None:
    assert limits_of(server(TCP, f'allow = ["{entry}"]')).allow == (network,)


@pytest.mark.parametrize(
    ("entry", "detail"),
    [
        ("10.0.0.1/8", "10.0.0.1/8 has host bits set"),
        ("2001:db8::1/32", "2001:db8::1/32 has host bits set"),
        ("10.0.0.0/33", "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"),
        ("localhost", "'localhost' does not appear to be an IPv4 or IPv6 network"),
        ("UID:0", "'UID:0' does not appear to be an IPv4 or IPv6 network"),
    ],
)
def test_malformed_network_rules(entry: str, detail: str) -> None:
    assert error_of(server(TCP, f'deny = ["{entry}"]')) == (
        f"{SOURCE}: servers.echo.deny: {entry!r} is not a network (CIDR), an address, "
        f"or uid:, gid:, user:, group: ({detail})"
    )


def test_peer_rules_resolve_names() -> None:
    limits = limits_of(
        server(
            UNIX,
            'allow = ["uid:1000", "gid:50", "user:root", "user:nobody", "group:nogroup"]\n'
            'deny = ["group:root"]',
        )
    )
    assert limits.allow == (
        Peer("uid", 1000, "uid:1000"),
        Peer("gid", 50, "gid:50"),
        Peer("uid", 0, "user:root"),
        Peer("uid", NOBODY.pw_uid, "user:nobody"),
        Peer("gid", NOGROUP.gr_gid, "group:nogroup"),
    )
    assert limits.deny == (Peer("gid", 0, "group:root"),)
    assert str(limits.allow[2]) == "user:root"  # shown as written


@pytest.mark.parametrize(
    ("entry", "what"),
    [
        ("user:no-such-user-x", "no such user"),
        ("user:", "no such user"),
        ("group:no-such-group-x", "no such group"),
        ("uid:root", "uid: takes a number below 4294967295"),
        ("uid:-1", "uid: takes a number below 4294967295"),
        ("gid:", "gid: takes a number below 4294967295"),
    ],
)
def test_peer_rule_errors(entry: str, what: str) -> None:
    assert error_of(server(UNIX, f'allow = ["{entry}"]')) == (
        f"{SOURCE}: servers.echo.allow: {entry!r}: {what}"
    )


def test_peer_rule_errors_in_supervisor() -> None:
    assert error_of('[supervisor]\ndeny = ["user:no-such-user-x"]\n' + ECHO) == (
        f"{SOURCE}: supervisor.deny: 'user:no-such-user-x': no such user"
    )


def test_rules_must_be_an_array_of_strings() -> None:
    assert error_of(server(TCP, 'allow = "10.0.0.0/8"')) == (
        f"{SOURCE}: servers.echo.allow: must be an array of strings, got string '10.0.0.0/8'"
    )


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (TCP, "busy"),
        (TCP, "421 busy\r\n"),
        (UNIX, "busy\n"),
        (TCP, "x" * 1024),
    ],
)
def test_banner_fail(address: str, text: str) -> None:
    toml = server(address, f"banner_fail = {text!r}".replace("'", '"'))
    assert limits_of(toml).banner_fail == text


@pytest.mark.parametrize("text", ["a\\nb", "a\\rb", "x" * 1025, "", "busy\\r\\n\\r\\n"])
def test_banner_fail_is_one_short_line(text: str) -> None:
    assert error_of(server(TCP, f'banner_fail = "{text}"')) == (
        f"{SOURCE}: servers.echo.banner_fail: must be one line of 1 to 1024 printable characters"
    )
    assert error_of(f'[supervisor]\nbanner_fail = "{text}"\n' + ECHO) == (
        f"{SOURCE}: supervisor.banner_fail: must be one line of 1 to 1024 printable characters"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("request_timeout = -1", "request_timeout: must be a number from 0 to 86400, got -1"),
        ("rate = 1e7", "rate: must be a number from 0 to 1e+06, got 1e+07"),
        ("source_rate = '2'", "source_rate: must be a number from 0 to 1e+06, got string '2'"),
        ("max_per_source = -1", "max_per_source: must be an integer from 0 to 4194304, got -1"),
        ("source_ipv4_prefix = 33", "source_ipv4_prefix: must be an integer from 0 to 32, got 33"),
        (
            "source_ipv6_prefix = 129",
            "source_ipv6_prefix: must be an integer from 0 to 128, got 129",
        ),
        (
            "rate = 1\nrate_burst = 2.5",
            "rate_burst: must be an integer from 1 to 2147483647, got float 2.5",
        ),
        ("rlimit_nofile = -1", "rlimit_nofile: must be an integer from 0 to 1073741824, got -1"),
        ("nice = 20", "nice: must be an integer from -20 to 19, got 20"),
        ("nice = -21", "nice: must be an integer from -20 to 19, got -21"),
        ("banner_fail = 1", "banner_fail: must be a string, got integer 1"),
    ],
)
def test_out_of_range_limits(extra: str, message: str) -> None:
    assert error_of(server(TCP, extra)) == f"{SOURCE}: servers.echo.{message}"
    assert error_of(f"[supervisor]\n{extra}\n" + ECHO) == f"{SOURCE}: supervisor.{message}"


# --- prefork and the guards -----------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("max_per_source", 2), ("rate", 5), ("source_rate", 1)])
def test_prefork_refuses_guards_the_supervisor_would_check(key: str, value: int) -> None:
    own = server(TCP, f'mode = "prefork"\n{key} = {value}')
    assert error_of(own) == (
        f"{SOURCE}: servers.echo.{key}: not available in prefork mode, "
        "where workers accept on their own"
    )
    inherited = f"[supervisor]\n{key} = {value}\n" + server(TCP, 'mode = "prefork"')
    assert error_of(inherited) == (
        f"{SOURCE}: servers.echo.{key}: not available in prefork mode, "
        f"where workers accept on their own (from supervisor.{key}: set 0 here)"
    )
    # The hint works: 0 in the server's table lets the prefork server be.
    fixed = f"[supervisor]\n{key} = {value}\n" + server(TCP, f'mode = "prefork"\n{key} = 0')
    assert not limits_of(fixed).guarded


def test_prefork_keeps_the_limits_its_children_apply() -> None:
    extra = 'mode = "prefork"\nrequest_timeout = 5\nrlimit_as = 256\nnice = 3'
    limits = limits_of(server(TCP, extra))
    assert (limits.request_timeout, limits.rlimit_as, limits.nice) == (5.0, 256, 3)


# --- user, group, allow_root --------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "credentials"),
    [
        ('user = "nobody"', Credentials(NOBODY.pw_uid, NOBODY.pw_gid, "nobody", "nogroup")),
        ('user = "nobody"\ngroup = "root"', Credentials(NOBODY.pw_uid, 0, "nobody", "root")),
        ("user = 0", Credentials(0, 0, "root", "root")),
        (
            f'user = "root"\ngroup = {NOGROUP.gr_gid}',
            Credentials(0, NOGROUP.gr_gid, "root", "nogroup"),
        ),
    ],
)
def test_credentials(extra: str, credentials: Credentials) -> None:
    assert parse(f"[supervisor]\n{extra}\n" + ECHO).supervisor.credentials == credentials
    assert parse(server(TCP, extra)).servers["echo"].credentials == credentials


def test_allow_root() -> None:
    assert parse("[supervisor]\nallow_root = true\n" + ECHO).supervisor.allow_root is True
    assert error_of("[supervisor]\nallow_root = 1\n" + ECHO) == (
        f"{SOURCE}: supervisor.allow_root: must be true or false, got integer 1"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('user = "no-such-user-x"', "user: no such user 'no-such-user-x'"),
        ("user = 2147483647", "user: no such user 2147483647"),
        ('user = "root"\ngroup = "no-such-group-x"', "group: no such group 'no-such-group-x'"),
        ('group = "root"', "group: needs user too"),
        ("user = true", "user: must be a string, got boolean True"),
    ],
)
def test_credential_errors(extra: str, message: str) -> None:
    assert error_of(f"[supervisor]\n{extra}\n" + ECHO) == f"{SOURCE}: supervisor.{message}"
    assert error_of(server(TCP, extra)) == f"{SOURCE}: servers.echo.{message}"


def test_a_server_user_needs_the_supervisor_to_keep_root() -> None:
    toml = '[supervisor]\nuser = "nobody"\n' + server(TCP, 'user = "root"')
    assert error_of(toml) == (
        f"{SOURCE}: servers.echo.user: a server's own user needs the supervisor to keep root: "
        "remove supervisor.user (and supervisor.group), or this one"
    )


# --- unix socket files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "extra", "expected"),
    [
        (UNIX, "socket_mode = 0o660", SocketFile(mode=0o660)),
        (UNIX, 'socket_mode = "0660"', SocketFile(mode=0o660)),
        (UNIXGRAM, 'socket_mode = "600"', SocketFile(mode=0o600)),
        (UNIX, "socket_mode = 0", SocketFile(mode=0)),
        (UNIX, 'socket_owner = "nobody"', SocketFile(uid=NOBODY.pw_uid)),
        (UNIX, "socket_owner = 0", SocketFile(uid=0)),
        (UNIX, 'socket_group = "nogroup"', SocketFile(gid=NOGROUP.gr_gid)),
        (
            UNIX,
            'socket_mode = 0o770\nsocket_owner = "root"\nsocket_group = 0',
            SocketFile(mode=0o770, uid=0, gid=0),
        ),
    ],
)
def test_socket_file(address: str, extra: str, expected: SocketFile) -> None:
    assert parse(server(address, extra)).servers["echo"].socket_file == expected


@pytest.mark.parametrize(
    ("address", "extra", "message"),
    [
        (TCP, "socket_mode = 0o660", "socket_mode: only applies to unix socket addresses"),
        (UDP, 'socket_group = "root"', "socket_group: only applies to unix socket addresses"),
        (
            UNIX,
            "socket_mode = 0o10000",
            'socket_mode: must be permission bits such as 0o660 or "0660", got 4096',
        ),
        (
            UNIX,
            'socket_mode = "10000"',  # shown as written, not as the 4096 it converts to
            "socket_mode: must be permission bits such as 0o660 or \"0660\", got '10000'",
        ),
        (
            UNIX,
            'socket_mode = "0o660"',
            "socket_mode: must be permission bits such as 0o660 or \"0660\", got '0o660'",
        ),
        (
            UNIX,
            'socket_mode = "0668"',
            "socket_mode: must be permission bits such as 0o660 or \"0660\", got '0668'",
        ),
        (
            UNIX,
            'socket_mode = ""',
            "socket_mode: must be permission bits such as 0o660 or \"0660\", got ''",
        ),
        (
            UNIX,
            "socket_mode = -1",
            'socket_mode: must be permission bits such as 0o660 or "0660", got -1',
        ),
        (
            UNIX,
            "socket_mode = true",
            'socket_mode: must be permission bits such as 0o660 or "0660", got True',
        ),
        (
            UNIX,
            'socket_owner = "no-such-user-x"',
            "socket_owner: no such user 'no-such-user-x'",
        ),
        (
            UNIX,
            'socket_group = "no-such-group-x"',
            "socket_group: no such group 'no-such-group-x'",
        ),
    ],
)
def test_socket_file_errors(address: str, extra: str, message: str) -> None:
    assert error_of(server(address, extra)) == f"{SOURCE}: servers.echo.{message}"


# --- diff -------------------------------------------------------------------------------------


def test_diff_sees_a_changed_limit() -> None:
    old = parse(server(TCP) + server(UNIX, name="local"))
    new = parse(server(TCP, "max_per_source = 3") + server(UNIX, name="local"))
    assert config.diff(old, new) == config.Diff(added=(), removed=(), changed=("echo",))
    assert str(config.diff(old, parse(server(TCP) + server(UNIX, name="local")))) == (
        "no server changed"
    )


def test_diff_sees_a_changed_reuse_port() -> None:
    # Reported like any other key (backlog too), although a socket that a reload keeps keeps
    # the SO_REUSEPORT it was bound with.
    old = parse(server(TCP) + server(UDP, name="udp"))
    new = parse(server(TCP, "reuse_port = true") + server(UDP, "reuse_port = false", name="udp"))
    assert config.diff(old, new).changed == ("echo",)


def test_diff_sees_a_changed_default_in_the_servers_that_inherit_it() -> None:
    servers = server(TCP) + server(UNIX, "rlimit_cpu = 5", name="local")
    old = parse("[supervisor]\nrlimit_cpu = 10\n" + servers)
    new = parse("[supervisor]\nrlimit_cpu = 20\n" + servers)
    assert config.diff(old, new).changed == ("echo",)


def test_request_timeout_needs_a_connection_or_a_child() -> None:
    toml = server("udp://127.0.0.1:7007", 'mode = "thread"\nrequest_timeout = 5')
    assert error_of(toml) == (
        f"{SOURCE}: servers.echo.request_timeout: a datagram server in thread or inline mode "
        "has no connection to time out (fork mode has a child to stop)"
    )
    inherited = "[supervisor]\nrequest_timeout = 5\n" + server(
        "udp://127.0.0.1:7007", 'mode = "inline"'
    )
    assert limits_of(inherited).request_timeout == 0
    assert limits_of(server("udp://127.0.0.1:7007", "request_timeout = 5")).request_timeout == 5


# --- files the supervisor writes, and relative unix paths (issue 13) ----------------------


def test_a_relative_unix_path_is_relative_to_the_file() -> None:
    loaded = parse(
        server("unix://run/echo.sock")
        + server("unixgram://../dgram.sock", name="dgram")
        + '[metrics]\naddress = "unix://run/metrics.sock"\n',
        "/srv/app/etc/supervisor.toml",
    )
    assert loaded.servers["echo"].address == Address("unix", path="/srv/app/etc/run/echo.sock")
    assert loaded.servers["dgram"].address == Address("unixgram", path="/srv/app/dgram.sock")
    assert loaded.metrics.address == Address("unix", path="/srv/app/etc/run/metrics.sock")


def test_a_relative_unix_path_too_long_once_resolved_is_refused() -> None:
    source = "/" + "d" * 100 + "/supervisor.toml"
    assert error_of(server("unix://echo.sock"), source) == (
        f"{source}: servers.echo.address: malformed address "
        f"{shown('unix:///' + 'd' * 100 + '/echo.sock')}: "
        "a unix socket path is at most 107 bytes long"
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[supervisor]\npidfile = "/run/sv/x.pid"\nlog_file = "/run/sv/x.pid"\n' + ECHO,
            "supervisor.log_file: /run/sv/x.pid is also supervisor.pidfile",
        ),
        (
            '[supervisor]\npidfile = "/run/sv/x.pid"\n' + server("unix:///run/sv/x.sock"),
            "servers.echo.address: /run/sv/x.sock is also the control socket next to "
            "supervisor.pidfile",
        ),
        (
            '[supervisor]\nlog_file = "/run/sv/m.sock"\n'
            + ECHO
            + '[metrics]\naddress = "unix:///run/sv/m.sock"\n',
            "metrics.address: /run/sv/m.sock is also supervisor.log_file",
        ),
        (
            '[supervisor]\nlog_file = "supervisor.toml"\n' + ECHO,
            "supervisor.log_file: /srv/supervisor.toml is also this configuration file",
        ),
    ],
    ids=["log-file-is-pidfile", "server-on-control-socket", "metrics-on-log-file", "log-on-self"],
)
def test_every_file_the_supervisor_writes_is_its_own(toml: str, message: str) -> None:
    assert error_of(toml, "/srv/supervisor.toml") == f"/srv/supervisor.toml: {message}"


@pytest.mark.parametrize(
    ("name", "where"),
    [('"echo\\n"', 'servers."echo\\n"'), ('"e cho"', 'servers."e cho"')],
)
def test_a_server_name_is_all_allowed_characters(name: str, where: str) -> None:
    toml = f'[servers.{name}]\naddress = "tcp://127.0.0.1:1"\nhandler = "a:B"\n'
    assert error_of(toml) == (
        f"{SOURCE}: {where}: a server name is 1-64 letters, digits, '_', '.' or '-'"
    )


def test_a_handler_spec_with_a_trailing_newline_is_refused() -> None:
    toml = '[servers.echo]\naddress = "tcp://127.0.0.1:1"\nhandler = "a:B\\n"\n'
    assert error_of(toml) == f"{SOURCE}: servers.echo.handler: must be 'module:Class', got 'a:B\\n'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[supervisor]\npidfile = "/run/sv.pid"\n', "/run/sv.pid"),
        # Not TOML (a mistake elsewhere): the line is still read, in its table only.
        ('[supervisor]\npidfile = "/run/sv.pid"  # here\n[servers.echo\n', "/run/sv.pid"),
        ("[servers.x\n[supervisor] # the settings\n  pidfile = 'run/sv.pid'\n", "run/sv.pid"),
        ('[servers.x\npidfile = "/elsewhere.pid"\n', None),
        ('[servers.x\n[supervisor]\npidfile = "/run/\\u0073v.pid"\n', None),  # (an escape)
        ('[supervisor]\npidfile = "/run/sv.pid\n', None),  # (its own line broken)
        ("[supervisor]\n", None),
    ],
)
def test_the_pidfile_as_written_even_in_a_file_that_is_not_toml(
    tmp_path: Path, text: str, expected: str | None
) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_text(text)
    assert config.pidfile_as_written(str(path)) == expected

"""The `supervisor` command as a user runs it: exit statuses and one-line errors on stderr."""

import os
import socket
import textwrap
from pathlib import Path

import pytest

import supervisor
from supervisor import config
from tests.configs import ECHO, server_table, supervisor_table
from tests.conftest import ROOT, one_line_error, run_cli

EX_USAGE = 64
EX_OSERR = 71
EX_CONFIG = 78


def write_config(tmp_path: Path, toml: str, name: str = "supervisor.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(toml))
    return path


# --- check --------------------------------------------------------------------------------


def test_check_prints_one_line_per_server(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        server_table("echo", "LineEchoHandler", max_children=3, backlog=16)
        + server_table(
            "udp", "DatagramEchoHandler", address="udp://[::1]:0", mode="thread", reuse_port=True
        )
        + server_table(
            "local",
            "BaseEchoHandler",
            address="unix:///tmp/sv-cli-check/local.sock",
            mode="inline",
        ),
    )
    result = run_cli("check", "-c", str(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "echo  tcp://127.0.0.1:0  tests.handlers:LineEchoHandler  fork  max_children=3  backlog=16",
        "udp  udp://[::1]:0  tests.handlers:DatagramEchoHandler  thread  max_children=40  "
        "max_packet_size=8192  reuse_port",
        "local  unix:///tmp/sv-cli-check/local.sock  tests.handlers:BaseEchoHandler  inline  "
        "backlog=1024",
        f"{path}: ok, 3 servers",
    ]
    assert not Path("/tmp/sv-cli-check").exists(), "check must not create socket directories"


def test_check_without_config_validates_the_bundled_example() -> None:
    bundled = config.load(str(ROOT / "etc" / "supervisor.toml"))
    result = run_cli("check")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert [line.split("  ")[:3] for line in lines[:-1]] == [
        [name, str(server.address), server.handler or f"server={server.server}"]
        for name, server in bundled.servers.items()
    ]
    # (the example's real path, which its relative paths are relative to)
    assert lines[-1] == f"{ROOT / 'etc' / 'supervisor.toml'}: ok, {len(bundled.servers)} servers"


def test_check_with_relative_path_names_the_file_as_given(tmp_path: Path) -> None:
    path = write_config(tmp_path, ECHO)
    relative = os.path.relpath(path, ROOT)
    result = run_cli("check", "--config", relative)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"{relative}: ok, 1 servers"


# --- configuration errors -----------------------------------------------------------------

CONFIG_ERRORS = [
    pytest.param(
        '[servers.echo]\naddress = "tcp://127.0.0.1:0"\nhandler = \n',
        "TOML syntax error: Invalid value (at line 3, column 11)",
        id="toml-syntax",
    ),
    pytest.param(
        "[supervisor]\nkill_grce = 1\n" + ECHO,
        "supervisor.kill_grce: unknown key (did you mean 'kill_grace'?)",
        id="unknown-key-supervisor",
    ),
    pytest.param(
        ECHO + "bakclog = 5\n",
        "servers.echo.bakclog: unknown key (did you mean 'backlog'?)",
        id="unknown-key-server",
    ),
    pytest.param(
        "server = 1\n" + ECHO,
        "server: unknown key (did you mean 'servers'?)",
        id="unknown-key-top",
    ),
    pytest.param(
        ECHO + "max_children = true\n",
        "servers.echo.max_children: must be an integer from 1 to 4194304, got boolean True",
        id="boolean-for-integer",
    ),
    pytest.param(
        ECHO + "max_children = 0\n",
        "servers.echo.max_children: must be an integer from 1 to 4194304, got 0",
        id="out-of-range",
    ),
    pytest.param(
        "[supervisor]\nlog_level = 'loud'\n" + ECHO,
        "supervisor.log_level: must be one of debug, info, warning, error, got 'loud'",
        id="bad-choice",
    ),
    pytest.param(
        server_table("echo", "BaseEchoHandler", address="tcp://127.0.0.1"),
        "servers.echo.address: malformed address 'tcp://127.0.0.1': expected HOST:PORT",
        id="missing-port",
    ),
    pytest.param(
        server_table("echo", "BaseEchoHandler", address="tcp://127.0.0.1:99999"),
        "servers.echo.address: malformed address 'tcp://127.0.0.1:99999': "
        "port 99999 is out of range 0-65535",
        id="port-too-large",
    ),
    pytest.param(
        server_table("echo", "BaseEchoHandler", address="tcp://::1:7007"),
        "servers.echo.address: malformed address 'tcp://::1:7007': "
        "an IPv6 address goes in brackets, as in tcp://[::1]:7007",
        id="ipv6-without-brackets",
    ),
    pytest.param(
        server_table("a", "BaseEchoHandler", address="unix:///tmp/sv-dup.sock")
        + server_table("b", "BaseEchoHandler", address="unixgram:///tmp/sv-dup.sock"),
        "servers.b.address: unixgram:///tmp/sv-dup.sock is already used by servers.a"
        " (unix:///tmp/sv-dup.sock)",
        id="same-unix-path",
    ),
    pytest.param(
        server_table("a", "BaseEchoHandler", address="tcp://127.0.0.1:7007")
        + server_table("b", "BaseEchoHandler", address="tcp://127.0.0.1:7007"),
        "servers.b.address: tcp://127.0.0.1:7007 is already used by servers.a"
        " (tcp://127.0.0.1:7007)",
        id="same-tcp-address",
    ),
    pytest.param(
        '[servers.echo]\naddress = "tcp://127.0.0.1:0"\n',
        "servers.echo.handler: is required, or else server: give either "
        "handler = 'module:Class' (a request handler class) or "
        "server = 'module:callable' (a function that returns a socketserver server)",
        id="missing-handler",
    ),
    pytest.param("[supervisor]\n", "servers: at least one server is required", id="no-servers"),
    pytest.param(
        server_table("echo", "BaseEchoHandler", address="udp://127.0.0.1:0", backlog=5),
        "servers.echo.backlog: only applies to stream addresses (tcp://, unix://)",
        id="backlog-on-udp",
    ),
    pytest.param(
        server_table("echo", "BaseEchoHandler", address="unix:///tmp/sv-r.sock", reuse_port=True),
        "servers.echo.reuse_port: only applies to tcp:// and udp:// addresses",
        id="reuse-port-on-unix",
    ),
    pytest.param(
        server_table("echo", "BaseEchoHandler", reuse_port="yes"),
        "servers.echo.reuse_port: must be true or false, got string 'yes'",
        id="reuse-port-not-a-boolean",
    ),
    pytest.param(
        server_table('"bad name"', "BaseEchoHandler"),
        """servers."bad name": a server name is 1-64 letters, digits, '_', '.' or '-'""",
        id="bad-server-name",
    ),
    pytest.param(
        '[servers.echo]\naddress = "tcp://127.0.0.1:0"\n'
        'handler = "tests.handlers.LineEchoHandler"\n',
        "servers.echo.handler: must be 'module:Class', got 'tests.handlers.LineEchoHandler'",
        id="bad-handler-spec",
    ),
    pytest.param(
        server_table("echo", "sv_cli_no_such_module:Handler"),
        "servers.echo.handler: cannot import 'sv_cli_no_such_module' "
        "(ModuleNotFoundError: No module named 'sv_cli_no_such_module')",
        id="handler-import-failure",
    ),
    pytest.param(
        server_table("echo", "NotAHandler"),
        "servers.echo.handler: tests.handlers:NotAHandler is not a "
        "socketserver.BaseRequestHandler subclass",
        id="not-a-handler",
    ),
    pytest.param(
        server_table("echo", "LineEchoHandler", address="udp://127.0.0.1:0"),
        "servers.echo.handler: tests.handlers:LineEchoHandler is a StreamRequestHandler "
        "but udp://127.0.0.1:0 is a datagram address",
        id="stream-handler-on-udp",
    ),
]


@pytest.mark.parametrize(("toml", "message"), CONFIG_ERRORS)
def test_check_config_errors(tmp_path: Path, toml: str, message: str) -> None:
    path = write_config(tmp_path, toml)
    assert one_line_error(run_cli("check", "-c", str(path)), EX_CONFIG) == f"{path}: {message}"


@pytest.mark.parametrize(("toml", "message"), CONFIG_ERRORS[:3] + CONFIG_ERRORS[-3:])
def test_run_config_errors(tmp_path: Path, toml: str, message: str) -> None:
    path = write_config(tmp_path, toml)
    assert one_line_error(run_cli("run", "-c", str(path)), EX_CONFIG) == f"{path}: {message}"


def test_handler_module_raising_at_import_on_config_path(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "sv_cli_broken.py").write_text(
        'print("noise on stdout")\nraise ImportError("needs\\n  libfoo")\n'
    )
    path = write_config(
        tmp_path,
        supervisor_table(path=["lib"]) + server_table("echo", "sv_cli_broken:H"),
    )
    result = run_cli("check", "-c", str(path))
    assert "Traceback" not in result.stderr
    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        f"{path}: servers.echo.handler: cannot import 'sv_cli_broken' (ImportError: needs libfoo)\n"
    )


def test_handler_found_through_config_path(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "sv_cli_ok.py").write_text(
        "import socketserver\n\nclass H(socketserver.BaseRequestHandler):\n    pass\n"
    )
    path = write_config(
        tmp_path,
        supervisor_table(path=["lib"]) + server_table("echo", "sv_cli_ok:H"),
    )
    result = run_cli("check", "-c", str(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[-1] == f"{path}: ok, 1 servers"


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    for command in ("check", "run"):
        assert one_line_error(run_cli(command, "-c", str(path)), EX_CONFIG) == (
            f"{path}: cannot read the file (No such file or directory)"
        )


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_bytes(b'[servers.echo]\naddress = "tcp://127.0.0.1:0"\nhandler = "\xff"\n')
    assert one_line_error(run_cli("check", "-c", str(path)), EX_CONFIG).startswith(f"{path}: ")


# --- command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "supervisor: the following arguments are required: COMMAND (see --help)"),
        (
            ("frobnicate",),
            "supervisor: argument COMMAND: invalid choice: 'frobnicate' "
            "(choose from 'run', 'check', 'reload', 'upgrade', 'stop', 'status', 'health') "
            "(see --help)",
        ),
        (("check", "--bogus"), "supervisor: unrecognized arguments: --bogus (see --help)"),
        (("run", "extra"), "supervisor: unrecognized arguments: extra (see --help)"),
        (
            ("check", "-c"),
            "supervisor check: argument -c/--config: expected one argument (see --help)",
        ),
    ],
)
def test_bad_command_line(args: tuple[str, ...], message: str) -> None:
    assert one_line_error(run_cli(*args), EX_USAGE) == message


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"supervisor {supervisor.__version__}\n",
        "",
    )


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: supervisor ")
    assert "run" in result.stdout
    assert "check" in result.stdout


# --- run: binding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "kind"), [("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)]
)
def test_run_with_a_port_in_use(tmp_path: Path, scheme: str, kind: socket.SocketKind) -> None:
    with socket.socket(socket.AF_INET, kind) as held:
        held.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            held.listen()
        port = held.getsockname()[1]
        path = write_config(
            tmp_path,
            server_table("busy", "BaseEchoHandler", address=f"{scheme}://127.0.0.1:{port}"),
        )
        result = run_cli("run", "-c", str(path))
    assert one_line_error(result, EX_OSERR) == (
        f"{path}: servers.busy: cannot bind {scheme}://127.0.0.1:{port} (Address already in use)"
    )


def test_run_bind_failure_releases_what_was_bound(tmp_path: Path, sockdir: Path) -> None:
    first = sockdir / "first.sock"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        path = write_config(
            tmp_path,
            server_table("first", "BaseEchoHandler", address=f"unix://{first}")
            + server_table("busy", "BaseEchoHandler", address=f"tcp://127.0.0.1:{port}"),
        )
        result = run_cli("run", "-c", str(path))
    assert one_line_error(result, EX_OSERR) == (
        f"{path}: servers.busy: cannot bind tcp://127.0.0.1:{port} (Address already in use)"
    )
    assert not first.exists(), "the socket file of the server bound first was left behind"


def test_run_on_a_unix_path_that_is_a_regular_file(tmp_path: Path, sockdir: Path) -> None:
    occupied = sockdir / "occupied.sock"
    occupied.write_text("not a socket\n")
    path = write_config(
        tmp_path, server_table("local", "BaseEchoHandler", address=f"unix://{occupied}")
    )
    assert one_line_error(run_cli("run", "-c", str(path)), EX_OSERR) == (
        f"{path}: servers.local: cannot bind unix://{occupied} "
        f"({occupied} exists and is not a socket)"
    )
    assert occupied.read_text() == "not a socket\n"


def test_run_on_a_unix_path_someone_listens_on(tmp_path: Path, sockdir: Path) -> None:
    taken = sockdir / "taken.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
        held.bind(str(taken))
        held.listen()
        path = write_config(
            tmp_path, server_table("local", "BaseEchoHandler", address=f"unix://{taken}")
        )
        result = run_cli("run", "-c", str(path))
        assert one_line_error(result, EX_OSERR) == (
            f"{path}: servers.local: cannot bind unix://{taken} (Address already in use)"
        )
        assert taken.exists(), "a live socket file was removed"


def test_check_shows_a_dotted_server_name_whole(tmp_path: Path) -> None:
    path = write_config(tmp_path, server_table('"echo.v2"', "BaseEchoHandler"))
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("echo.v2  tcp://127.0.0.1:0  ")

"""handlers.import_handler and hosting.load_all: every failure is one ConfigError line."""

import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import config, handlers, hosting
from supervisor.errors import ConfigError
from tests.configs import server_table, supervisor_table
from tests.handlers import BaseEchoHandler, DatagramEchoHandler, LineEchoHandler

SOURCE = "etc/supervisor.toml"


@pytest.fixture(autouse=True)
def restore_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what importing handlers does to sys.path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("sv_test_"):
            del sys.modules[name]


def load(toml: str, source: str = SOURCE) -> config.Config:
    return config.parse(tomllib.loads(textwrap.dedent(toml)), source)


def one_server(address: str, handler: str, name: str = "echo") -> config.Config:
    return load(server_table(name, handler, address=address))


def import_error(loaded: config.Config) -> str:
    with pytest.raises(ConfigError) as caught:
        hosting.load_all(loaded)
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.where.startswith("servers.")
    return message


def write_module(directory: Path, name: str, source: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def test_import_handler_returns_the_class() -> None:
    assert handlers.import_handler("tests.handlers:LineEchoHandler") is LineEchoHandler


def test_import_handler_follows_dotted_attributes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_module(
        tmp_path,
        "sv_test_nested",
        """
        import socketserver

        class Outer:
            class Inner(socketserver.BaseRequestHandler):
                pass
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = handlers.import_handler("sv_test_nested:Outer.Inner")
    assert found.__qualname__ == "Outer.Inner"


def test_import_all_maps_server_names_to_classes() -> None:
    loaded = load(
        server_table("a", "tests.handlers:LineEchoHandler")
        + server_table("b", "tests.handlers:DatagramEchoHandler", address="udp://127.0.0.1:0")
        + server_table("c", "tests.handlers:BaseEchoHandler", address="unixgram:///run/c.sock")
        + server_table("d", "tests.handlers:BaseEchoHandler")
    )
    codes = hosting.load_all(loaded)
    assert {name: code.handler for name, code in codes.items()} == {
        "a": LineEchoHandler,
        "b": DatagramEchoHandler,
        "c": BaseEchoHandler,
        "d": BaseEchoHandler,
    }


def test_module_that_cannot_be_imported() -> None:
    loaded = one_server("tcp://127.0.0.1:0", "sv_test_no_such_module:Handler")
    assert import_error(loaded) == (
        f"{SOURCE}: servers.echo.handler: cannot import 'sv_test_no_such_module' "
        "(ModuleNotFoundError: No module named 'sv_test_no_such_module')"
    )


def test_missing_submodule_of_a_real_package() -> None:
    loaded = one_server("tcp://127.0.0.1:0", "tests.sv_test_nothing:Handler")
    assert import_error(loaded) == (
        f"{SOURCE}: servers.echo.handler: cannot import 'tests.sv_test_nothing' "
        "(ModuleNotFoundError: No module named 'tests.sv_test_nothing')"
    )


def test_module_that_raises_at_import_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(
        tmp_path,
        "sv_test_raises",
        """
        raise RuntimeError("database\\n   unreachable  at import")
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = one_server("tcp://127.0.0.1:0", "sv_test_raises:Handler")
    assert import_error(loaded) == (
        f"{SOURCE}: servers.echo.handler: cannot import 'sv_test_raises' "
        "(RuntimeError: database unreachable at import)"
    )
    assert "sv_test_raises" not in sys.modules


def test_module_that_exits_at_import_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "sv_test_exits", "import sys\nsys.exit('no config for me')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = one_server("tcp://127.0.0.1:0", "sv_test_exits:Handler")
    assert import_error(loaded) == (
        f"{SOURCE}: servers.echo.handler: cannot import 'sv_test_exits' "
        "(SystemExit: no config for me)"
    )


def test_import_error_cause_is_chained() -> None:
    loaded = one_server("tcp://127.0.0.1:0", "sv_test_no_such_module:Handler")
    with pytest.raises(ConfigError) as caught:
        hosting.load_all(loaded)
    assert isinstance(caught.value.__cause__, ValueError)
    assert isinstance(caught.value.__cause__.__cause__, ModuleNotFoundError)


def test_missing_attribute() -> None:
    loaded = one_server("tcp://127.0.0.1:0", "tests.handlers:NoSuchHandler")
    assert import_error(loaded) == (
        f"{SOURCE}: servers.echo.handler: module 'tests.handlers' has no attribute 'NoSuchHandler'"
    )


def test_missing_nested_attribute() -> None:
    loaded = one_server("tcp://127.0.0.1:0", "tests.handlers:LineEchoHandler.Nope")
    assert import_error(loaded) == (
        f"{SOURCE}: servers.echo.handler: module 'tests.handlers' has no attribute "
        "'LineEchoHandler.Nope'"
    )


@pytest.mark.parametrize(
    "spec",
    [
        "tests.handlers:NotAHandler",
        "tests.handlers:SleepHandler.delay",
        "tests.handlers:os",
        "socketserver:TCPServer",
    ],
)
def test_not_a_request_handler(spec: str) -> None:
    loaded = one_server("tcp://127.0.0.1:0", spec)
    assert import_error(loaded) == (
        f"{SOURCE}: servers.echo.handler: {spec} is not a socketserver.BaseRequestHandler subclass"
    )


@pytest.mark.parametrize("address", ["udp://127.0.0.1:0", "unixgram:///run/echo.sock"])
def test_stream_handler_on_a_datagram_address(address: str) -> None:
    loaded = one_server(address, "tests.handlers:LineEchoHandler")
    assert import_error(loaded) == (
        f"{SOURCE}: servers.echo.handler: tests.handlers:LineEchoHandler is a "
        f"StreamRequestHandler but {address} is a datagram address"
    )


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:0", "unix:///run/echo.sock"])
def test_datagram_handler_on_a_stream_address(address: str) -> None:
    loaded = one_server(address, "tests.handlers:DatagramEchoHandler")
    assert import_error(loaded) == (
        f"{SOURCE}: servers.echo.handler: tests.handlers:DatagramEchoHandler is a "
        f"DatagramRequestHandler but {address} is a stream address"
    )


def test_the_failing_server_is_named() -> None:
    loaded = load(
        server_table("good", "tests.handlers:LineEchoHandler")
        + server_table("bad", "tests.handlers:NotAHandler")
    )
    assert import_error(loaded) == (
        f"{SOURCE}: servers.bad.handler: tests.handlers:NotAHandler is not a "
        "socketserver.BaseRequestHandler subclass"
    )


def test_supervisor_path_makes_a_directory_importable(tmp_path: Path) -> None:
    write_module(
        tmp_path / "conf" / "lib",
        "sv_test_on_path",
        """
        import socketserver

        class Handler(socketserver.StreamRequestHandler):
            pass
        """,
    )
    source = str(tmp_path / "conf" / "supervisor.toml")
    loaded = load(
        supervisor_table(path=["lib"]) + server_table("echo", "sv_test_on_path:Handler"), source
    )
    classes = {name: code.handler for name, code in hosting.load_all(loaded).items()}
    assert classes["echo"].__module__ == "sv_test_on_path"
    assert classes["echo"].__name__ == "Handler"
    assert sys.path[0] == str(tmp_path / "conf" / "lib")


def test_without_supervisor_path_the_directory_is_not_importable(tmp_path: Path) -> None:
    write_module(tmp_path / "lib", "sv_test_off_path", "class Handler: pass\n")
    loaded = one_server("tcp://127.0.0.1:0", "sv_test_off_path:Handler")
    assert import_error(loaded) == (
        f"{SOURCE}: servers.echo.handler: cannot import 'sv_test_off_path' "
        "(ModuleNotFoundError: No module named 'sv_test_off_path')"
    )


def test_extend_path_puts_entries_first_in_order_once() -> None:
    handlers.extend_path(["/sv/a", "/sv/b"])
    handlers.extend_path(["/sv/b"])
    assert sys.path[:2] == ["/sv/a", "/sv/b"]
    assert sys.path.count("/sv/b") == 1

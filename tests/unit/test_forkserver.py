"""The fork server's set-up, without a process: importing handlers, and what it is told."""

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from supervisor import forking, forkserver


@pytest.fixture
def isolated_imports() -> Iterator[None]:
    """forkserver.load replaces sys.path and imports: undo both."""
    path, modules, argv = list(sys.path), dict(sys.modules), list(sys.argv)
    yield
    sys.path[:], sys.argv[:] = path, argv
    for name in [name for name in sys.modules if name not in modules]:
        del sys.modules[name]


def spec(name: str, handler: str) -> dict[str, object]:
    return {
        "name": name,
        "handler": handler,
        "server_address": ("127.0.0.1", 7),
        "family": int(socket.AF_INET),
        "type": int(socket.SOCK_STREAM),
        "proto": 0,
        "max_packet_size": 8192,
        "server_port": 7,
    }


def make_package(root: Path, directory: str, handler_class: str = "Handler") -> None:
    """A package whose directory name is not its import name (as setuptools' package_dir
    maps `services/` to `supervisor_services`)."""
    package = root / directory
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(
        f"import socketserver\nclass {handler_class}(socketserver.BaseRequestHandler):\n"
        "    def handle(self): pass\n"
    )


@pytest.mark.usefixtures("isolated_imports")
def test_a_package_found_only_by_an_import_hook_is_loaded_from_its_location(
    tmp_path: Path,
) -> None:
    make_package(tmp_path, "src_dir")
    setup = {
        "path": [*sys.path],
        "locations": {
            "mapped_pkg": (str(tmp_path / "src_dir" / "__init__.py"), [str(tmp_path / "src_dir")])
        },
        "argv": ["supervisor", "run"],
        "log_format": "%(message)s",
        "journal_pid": 0,
        "log_level": "INFO",
        "servers": [spec("one", "mapped_pkg.mod:Handler"), spec("two", "absent_pkg.mod:Handler")],
    }
    servers, failed = forkserver.load(setup)
    assert list(servers) == ["one"]
    view = servers["one"]
    assert view.RequestHandlerClass.__module__ == "mapped_pkg.mod"
    assert (view.server_address, view.server_name, view.server_port) == (
        ("127.0.0.1", 7),
        socket.getfqdn("127.0.0.1"),  # (as HTTPServer.server_bind computes it)
        7,
    )
    assert view.fileno() == -1  # a closed socket, as a supervisor's child sees its listener
    assert failed == {"two": "ModuleNotFoundError: No module named 'absent_pkg'"}


@pytest.mark.usefixtures("isolated_imports")
def test_a_failing_import_is_reported_on_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('no\\nway')\n")
    setup = {
        "path": [str(tmp_path), *sys.path],
        "locations": {},
        "argv": ["supervisor", "run"],
        "log_format": "%(message)s",
        "journal_pid": 0,
        "log_level": "INFO",
        "servers": [spec("bad", "broken_mod:Handler")],
    }
    servers, failed = forkserver.load(setup)
    assert servers == {}
    assert failed == {"bad": "RuntimeError: no way"}


def test_package_locations_name_the_top_level_package() -> None:
    from tests.handlers import LineEchoHandler  # noqa: PLC0415

    server = SimpleNamespace(RequestHandlerClass=LineEchoHandler, config=SimpleNamespace(server=""))
    locations = forking.package_locations([server])
    origin, search = locations["tests"]
    assert origin == str(Path(__file__).parent.parent / "__init__.py")
    assert search == [str(Path(__file__).parent.parent)]


def test_interpreter_flags_keep_the_supervisors_and_add_no_site() -> None:
    flags = forking.interpreter_flags()
    assert flags[:2] == ("-S", "-P")
    assert flags.count("-S") == 1

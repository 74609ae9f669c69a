"""Reload on SIGHUP: atomic, and without losing a connection on the servers it does not change."""

import os
import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from supervisor.errors import ConfigError
from supervisor.reload import prepare
from tests.configs import server_table, supervisor_table
from tests.conftest import StartSupervisor, Supervisor, connect, exchange, readline


def write(path: Path, toml: str) -> None:
    """Replace the file atomically, as an editor or a configuration manager does."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(textwrap.dedent(toml))
    os.replace(temporary, path)


def reload(supervisor: Supervisor, toml: str, outcome: str = "reloaded: ") -> str:
    """Write the file, send SIGHUP, and return the log line that reports the outcome."""
    start = len(supervisor.lines)
    write(supervisor.config, toml)
    supervisor.signal(signal.SIGHUP)
    pattern = r"(reloaded: .*|reload failed, .*)"
    line = supervisor.wait_for_log(pattern, start=start).group(0)
    assert line.startswith(outcome), line
    return line


def stable_servers(sockdir: Path) -> str:
    """Three servers the reloads in these tests leave alone: TCP, UDP and unix."""
    return (
        server_table("stable", "LineEchoHandler")
        + server_table(
            "stable-udp", "DatagramEchoHandler", address="udp://127.0.0.1:0", mode="thread"
        )
        + server_table(
            "stable-unix", "LineEchoHandler", address=f"unix://{sockdir}/stable.sock", mode="thread"
        )
    )


class Datagram:
    """A UDP server address: one datagram out, one back, with a deadline."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    def __repr__(self) -> str:
        return f"udp://{self.address[0]}:{self.address[1]}"

    def exchange(self, data: bytes) -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(data, self.address)
            return sock.recv(65536)


class Clients:
    """Threads that keep making requests to some servers, counting every failure."""

    def __init__(
        self, addresses: list[tuple[str, int] | str | Datagram], per_address: int = 2
    ) -> None:
        self.done = threading.Event()
        self.requests = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(address,), daemon=True)
            for address in addresses
            for _ in range(per_address)
        ]

    def _run(self, address: tuple[str, int] | str | Datagram) -> None:
        while not self.done.is_set():
            try:
                if isinstance(address, Datagram):
                    reply, expected = address.exchange(b"ping"), b"echo ping"
                else:
                    reply, expected = exchange(address, b"ping\n", timeout=10), b" ping\n"
                error = "" if reply.endswith(expected) else f"bad reply {reply!r}"
            except OSError as exc:
                error = f"{address}: {exc!r}"
            with self._lock:
                self.requests += 1
                if error:
                    self.failures.append(error)

    def __enter__(self) -> "Clients":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for thread in self._threads:
            thread.join(30)


@pytest.fixture
def stable(start_supervisor: StartSupervisor, sockdir: Path) -> Supervisor:
    return start_supervisor(stable_servers(sockdir))


def test_many_reloads_under_load_lose_no_connection(stable: Supervisor, sockdir: Path) -> None:
    base = stable_servers(sockdir)
    variants = [
        base + server_table("flip", "GreetingHandler"),
        base
        + server_table(
            "flip",
            "OtherGreetingHandler",
            address=f"unix://{sockdir}/flip.sock",
            mode="thread",
            max_children=3,
        ),
        base + "\n[servers.broken\n",  # a TOML syntax error: rejected, nothing changes
    ]
    addresses: list[tuple[str, int] | str | Datagram] = [
        stable.inet("stable"),
        stable.unix_path("stable-unix"),
        Datagram(stable.inet("stable-udp")),
    ]
    with Clients(addresses) as clients:
        for number in range(24):
            variant = variants[number % 3]
            reload(stable, variant, "reload failed" if number % 3 == 2 else "reloaded: ")
    assert clients.failures == []
    print(f"{clients.requests} requests during 24 reloads, none failed")
    assert clients.requests > 72  # the clients really ran during the reloads
    assert stable.process.poll() is None


def test_a_burst_of_hups_ends_in_the_state_of_the_last_file(
    stable: Supervisor, sockdir: Path
) -> None:
    base = stable_servers(sockdir)
    for number in range(10):
        write(
            stable.config,
            base
            + server_table(
                f"v{number}", "LineEchoHandler", address=f"unix://{sockdir}/v{number}.sock"
            ),
        )
        stable.signal(signal.SIGHUP)
    write(
        stable.config,
        base + server_table("final", "GreetingHandler", address=f"unix://{sockdir}/final.sock"),
    )
    stable.signal(signal.SIGHUP)
    stable.wait_for_log(r"final: listening on")
    # Every HUP has been handled once `final` listens: the intermediate servers are gone.
    assert exchange(str(sockdir / "final.sock"), b"hi\n") == b"hello hi\n"
    assert sorted(path.name for path in sockdir.glob("*.sock")) == ["final.sock", "stable.sock"]


def test_one_reload_adds_removes_moves_and_changes_servers(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    keeper_table = server_table("keeper", "PidHandler", max_children=1)
    supervisor = start_supervisor(
        keeper_table
        + server_table("gone", "PidHandler", address=f"unix://{sockdir}/gone.sock")
        + server_table("mover", "GreetingHandler", address=f"unix://{sockdir}/mover-a.sock")
        + server_table("changer", "PidHandler", max_children=3)
    )
    keeper, changer = supervisor.inet("keeper"), supervisor.inet("changer")
    keeper_held, queued = connect(keeper), connect(keeper)
    gone_held = connect(str(sockdir / "gone.sock"))
    changer_held = [connect(changer) for _ in range(3)]
    try:
        for sock in [keeper_held, gone_held, *changer_held]:
            assert int(readline(sock)) > 0  # all running; `queued` waits in keeper's queue
        line = reload(
            supervisor,
            keeper_table
            + server_table("mover", "GreetingHandler", address=f"unix://{sockdir}/mover-b.sock")
            + server_table(
                "changer",
                "GreetingHandler",
                address=f"tcp://{changer[0]}:{changer[1]}",
                mode="thread",
                max_children=1,
            )
            + server_table(
                "newbie", "OtherGreetingHandler", address=f"unix://{sockdir}/newbie.sock"
            ),
        )
        assert line == "reloaded: added newbie; removed gone; changed mover, changer"
        # added
        assert exchange(str(sockdir / "newbie.sock"), b"hi\n") == b"howdy hi\n"
        # moved: the old path is gone, the new one answers
        assert exchange(str(sockdir / "mover-b.sock"), b"hi\n") == b"hello hi\n"
        assert not (sockdir / "mover-a.sock").exists()
        # removed: no longer accepting, its file removed, its running request finishes
        assert not (sockdir / "gone.sock").exists()
        gone_held.sendall(b"done\n")
        assert readline(gone_held) == b"bye\n"
        supervisor.wait_for_log(r"gone: removed server drained")
        # changed: running requests (3, over the new limit of 1) are not killed and finish
        # with the old handler; the new handler serves once the count is below the limit.
        for sock in changer_held:
            sock.sendall(b"done\n")
            assert readline(sock) == b"bye\n"
        assert exchange(changer, b"hi\n") == b"hello hi\n"
        # unchanged: the very same socket, so the queued connection was not lost
        keeper_held.sendall(b"done\n")
        assert readline(keeper_held) == b"bye\n"
        assert int(readline(queued)) > 0
        queued.sendall(b"done\n")
        assert readline(queued) == b"bye\n"
    finally:
        for sock in [keeper_held, queued, gone_held, *changer_held]:
            sock.close()


def test_a_handler_module_edited_on_disk_is_imported_again(
    start_supervisor: StartSupervisor, tmp_path: Path
) -> None:
    module = tmp_path / "handlers_dir" / "versioned.py"
    module.parent.mkdir()
    source = textwrap.dedent(
        """
        import socketserver

        VERSION = b"one"

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(b"ready\\n")
                self.wfile.flush()
                self.rfile.readline()
                self.wfile.write(VERSION + b"\\n")
        """
    )
    module.write_text(source)
    toml = supervisor_table(path=["handlers_dir"]) + server_table(
        "versioned", "versioned:Handler", mode="thread"
    )
    supervisor = start_supervisor(toml)
    address = supervisor.inet("versioned")
    with connect(address) as running:
        assert readline(running) == b"ready\n"
        module.write_text(source.replace('b"one"', 'b"two"'))  # same size, same second
        reload(supervisor, toml)
        assert exchange(address, b"go\n") == b"ready\ntwo\n"
        running.sendall(b"go\n")
        assert readline(running) == b"one\n"  # the request already running kept the old code
    module.write_text(source.replace("VERSION = ", "VERSION = ("))  # a syntax error
    line = reload(supervisor, toml, "reload failed")
    assert "servers.versioned.handler: cannot import 'versioned' (SyntaxError:" in line
    assert exchange(address, b"go\n") == b"ready\ntwo\n"


@pytest.mark.parametrize(
    ("broken", "error"),
    [
        ("[servers.new\n", "TOML syntax error"),
        (
            '[servers.new]\naddress = "tcp://127.0.0.1:0"\n'
            'handler = "tests.handlers:GreetingHandler"\nmax_children = 0\n',
            "servers.new.max_children: must be an integer from 1 to 4194304, got 0",
        ),
        (
            '[servers.new]\naddress = "tcp://127.0.0.1:0"\nhandler = "no_such_module:Handler"\n',
            "servers.new.handler: cannot import 'no_such_module'",
        ),
    ],
)
def test_a_rejected_reload_changes_nothing(
    stable: Supervisor, sockdir: Path, broken: str, error: str
) -> None:
    line = reload(stable, stable_servers(sockdir) + broken, "reload failed")
    assert line == (
        f"reload failed, still running the previous configuration: {stable.config}: "
        + line.split(f"{stable.config}: ", 1)[1]
    )
    assert error in line
    assert "new: listening" not in stable.log
    assert exchange(stable.inet("stable"), b"x\n").endswith(b" x\n")
    assert exchange(stable.unix_path("stable-unix"), b"x\n").endswith(b" x\n")


def test_a_reload_that_cannot_bind_closes_what_it_bound(stable: Supervisor, sockdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = reload(
            stable,
            stable_servers(sockdir)
            + server_table("first", "GreetingHandler", address=f"unix://{sockdir}/first.sock")
            + server_table("second", "GreetingHandler", address=f"tcp://127.0.0.1:{port}"),
            "reload failed",
        )
    assert line.endswith(
        f"servers.second: cannot bind tcp://127.0.0.1:{port} (Address already in use)"
    )
    assert not (sockdir / "first.sock").exists()  # bound during the attempt, closed again
    assert exchange(stable.inet("stable"), b"x\n").endswith(b" x\n")


def test_a_datagram_server_moves_away_and_back(stable: Supervisor, sockdir: Path) -> None:
    """Moving releases the old socket at once, so moving back can bind it again."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        first = probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        second = probe.getsockname()[1]
    base = stable_servers(sockdir)
    for port in (first, second, first, second):
        reload(
            stable,
            base
            + server_table(
                "mover", "DatagramEchoHandler", address=f"udp://127.0.0.1:{port}", mode="inline"
            ),
        )
        assert Datagram(("127.0.0.1", port)).exchange(b"here") == b"echo here"


def test_names_for_one_address_cannot_share_a_socket(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    """localhost and 127.0.0.1 pass the configuration check: the server that did not change
    keeps its socket, and the newcomer's bind is refused."""
    base = stable_servers(sockdir).replace("tcp://127.0.0.1:0", "tcp://localhost:0")
    supervisor = start_supervisor(base)
    host, port = supervisor.inet("stable")
    intruder = server_table("intruder", "GreetingHandler", address=f"tcp://127.0.0.1:{port}")
    line = reload(supervisor, intruder + base, "reload failed")
    assert line.endswith(f"cannot bind tcp://127.0.0.1:{port} (Address already in use)")
    assert exchange((host, port), b"x\n").endswith(b" x\n")
    assert supervisor.process.poll() is None


def test_a_changed_log_file_applies_at_once(
    start_supervisor: StartSupervisor, tmp_path: Path, sockdir: Path
) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    toml = stable_servers(sockdir)
    supervisor = start_supervisor(supervisor_table(log_file=str(first)) + toml, ready=False)
    wait_in_file(first, "ready: ")
    write(supervisor.config, supervisor_table(log_file=str(second)) + toml)
    supervisor.signal(signal.SIGHUP)
    wait_in_file(second, "log_file changed: reopened")  # the log goes to the new file
    assert "reloaded: no server changed" in first.read_text()
    assert "reopened" not in first.read_text()


def wait_in_file(path: Path, text: str) -> None:
    """Wait for `text` in a file another process writes (re-read, with a deadline)."""
    deadline = time.monotonic() + 10
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} not in {path}"
        time.sleep(0.02)


def test_a_rejected_reload_leaves_the_imported_modules_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: a handler module refreshed before another one fails is put back."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    handlers_dir = tmp_path / "hd"
    handlers_dir.mkdir()
    source = "import socketserver\nclass H(socketserver.BaseRequestHandler):\n    v = {}\n"
    (handlers_dir / "rb_first.py").write_text(source.format(1))
    (handlers_dir / "rb_second.py").write_text(source.format(1))
    config = tmp_path / "sv.toml"
    config.write_text(
        supervisor_table(path=["hd"])
        + server_table("a", "rb_first:H")
        + server_table("b", "rb_second:H")
    )
    running = prepare(str(config))
    try:
        original = sys.modules["rb_first"]
        (handlers_dir / "rb_first.py").write_text(source.format(22))  # changed: re-imported
        (handlers_dir / "rb_second.py").write_text("syntax error (")
        with pytest.raises(ConfigError, match=r"servers\.b\.handler: cannot import 'rb_second'"):
            prepare(str(config), running.listeners, reloading=True)
        assert sys.modules["rb_first"] is original
    finally:
        for listener in running.listeners.values():
            listener.close()

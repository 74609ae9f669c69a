"""`supervisor status`, `reload` and `stop` against a running instance, and its control socket.

The supervisor runs in the foreground (the `start_supervisor` fixture) with a pidfile in a short
directory, so its control socket (`sv.pid` -> `sv.sock`) fits in a unix socket address.
"""

import contextlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor import control
from tests.configs import ECHO, FAILING, METRICS_ANY_PORT, TomlValue, server_table, supervisor_table
from tests.conftest import (
    CLI_ENV,
    CLI_TIMEOUT,
    ROOT,
    StartSupervisor,
    Supervisor,
    cli_command,
    connect,
    exchange,
    one_line_error,
    readline,
    run_cli,
)

EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_OSERR = 71
EX_CONFIG = 78
NOBODY = 65534

HELD = server_table("held", "PidHandler", max_children=5)
EXTRA = server_table("extra", "BaseEchoHandler")


def config_text(sockdir: Path, servers: str = ECHO, **settings: TomlValue) -> str:
    """`servers` under a supervisor with its pidfile (and control socket) in `sockdir`."""
    return supervisor_table(pidfile=f"{sockdir}/sv.pid", **settings) + servers + METRICS_ANY_PORT


@contextlib.contextmanager
def cli_process(*args: str) -> Iterator[subprocess.Popen[str]]:
    """The command running in the background, killed if it is still running at the end.

    `stop` waits until the supervisor's process is gone, and that process is this test's child:
    it is gone once the test reaps it, so the test runs `stop` in the background and reaps."""
    process = subprocess.Popen(
        cli_command(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
        cwd=ROOT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def inet(address: str) -> tuple[str, int]:
    host, _, port = address.split("://", 1)[1].rpartition(":")
    return host.strip("[]"), int(port)


def wait_for_lines(supervisor: Supervisor, pattern: str, count: int) -> None:
    """Wait until `count` log lines match `pattern`."""
    regex = re.compile(pattern)
    start = 0
    for _ in range(count):
        supervisor.wait_for_log(pattern, start=start)
        start = next(
            i for i, line in enumerate(supervisor.lines) if i >= start and regex.search(line)
        )
        start += 1


def server_rows(status: str) -> list[list[str]]:
    """The rows of `supervisor status`'s table, below its header, as lists of cells."""
    lines = status.splitlines()
    start = lines.index("") + 2
    return [line.split() for line in lines[start : lines.index("", start)]]


def status_of(sockdir: Path) -> dict[str, object]:
    return control.request(str(sockdir / "sv.sock"), "status")


# --- status -------------------------------------------------------------------------------


def test_status_shows_servers_traffic_and_children(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    local = f"unix://{sockdir}/local.sock"
    supervisor = start_supervisor(
        config_text(
            sockdir,
            ECHO
            + FAILING
            + HELD
            + server_table("local", "BaseEchoHandler", address=local, mode="inline"),
            log_level="debug",
        )
    )
    for _ in range(3):
        assert exchange(supervisor.inet("echo"), b"ping") == b"base ping"
    assert exchange(supervisor.inet("failing"), b"boom\n") == b""
    assert exchange(supervisor.unix_path("local"), b"hi") == b"base hi"
    wait_for_lines(supervisor, r"echo: child \d+ exited with status 0", 3)
    supervisor.wait_for_log(r"failing: child \d+ exited with status 1")

    with connect(supervisor.inet("held")) as held:
        child = int(readline(held))
        result = run_cli("status", "-c", str(supervisor.config))
        held.sendall(b"done\n")
        assert readline(held) == b"bye\n"

    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert re.fullmatch(
        rf"supervisor: running, pid {supervisor.pid}, up \d+\.\ds, "
        rf"config {re.escape(str(supervisor.config))}",
        lines[0],
    ), lines[0]
    assert lines[1:3] == ["last reload: none", ""]
    table = lines[3:8]
    assert [line.split() for line in table] == [
        ["SERVER", "ADDRESS", "MODE", "CHILDREN", "REQUESTS", "ERRORS", "REJECTED"],
        ["echo", supervisor.addresses["echo"], "fork", "0/40", "3", "0", "0"],
        ["failing", supervisor.addresses["failing"], "fork", "0/40", "1", "1", "0"],
        ["held", supervisor.addresses["held"], "fork", "1/5", "1", "0", "0"],
        ["local", local, "inline", "-", "1", "0", "0"],
    ]
    columns = [match.start() for match in re.finditer(r"\S+", table[0])]
    for line in table:  # aligned under the header
        assert [match.start() for match in re.finditer(r"\S+", line)] == columns, line
    assert lines[8] == ""
    tree = lines[9:]
    assert len(tree) == 2, result.stdout
    assert re.fullmatch(rf"{supervisor.pid}  supervisor  up \d+\.\ds", tree[0]), tree[0]
    assert re.fullmatch(rf"  {child}  held  up \d+\.\ds", tree[1]), tree[1]


def test_status_into_a_closed_pipe_ends_quietly(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(config_text(sockdir))
    read_end, write_end = os.pipe()
    os.close(read_end)  # `supervisor status | head -0`: nobody reads
    try:
        result = subprocess.run(
            cli_command("status", "-c", str(supervisor.config)),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (1, "")


# --- reload -------------------------------------------------------------------------------


def test_reload_applies_an_edited_file(start_supervisor: StartSupervisor, sockdir: Path) -> None:
    supervisor = start_supervisor(config_text(sockdir))
    supervisor.config.write_text(config_text(sockdir, ECHO + "max_children = 7\n" + EXTRA))
    start = len(supervisor.lines)

    result = run_cli("reload", "-c", str(supervisor.config))

    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "reloaded: added extra; changed echo\n",
        "",
    )
    extra = supervisor.wait_for_log(r"extra: listening on (\S+)", start=start).group(1)
    assert exchange(inet(extra), b"new") == b"base new"
    assert exchange(supervisor.inet("echo"), b"old") == b"base old"  # the same socket
    state = status_of(sockdir)
    servers = state["servers"]
    assert isinstance(servers, list)
    assert [(server["name"], server["max_children"]) for server in servers] == [
        ("echo", 7),
        ("extra", 40),
    ]
    last = state["last_reload"]
    assert isinstance(last, dict)
    assert (last["ok"], last["message"]) == (True, "added extra; changed echo")


BROKEN = {
    "invalid value": ECHO + "max_children = 0\n",
    "handler import": ECHO.replace("tests.handlers:", "tests.no_such_module:"),
    "toml syntax": ECHO.replace("[servers.echo]", "[servers.echo"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_reload_of_a_broken_file_is_rejected_and_changes_nothing(
    start_supervisor: StartSupervisor, sockdir: Path, case: str
) -> None:
    supervisor = start_supervisor(config_text(sockdir))
    path = str(supervisor.config)
    supervisor.config.write_text(config_text(sockdir, BROKEN[case]))
    expected = one_line_error(run_cli("check", "-c", path), EX_CONFIG)
    # (a file that is not TOML still names its pidfile, on a line of its own: it is found)

    result = run_cli("reload", "-c", path)

    assert one_line_error(result, EX_CONFIG) == f"reload rejected: {expected}"
    supervisor.wait_for_log(
        "reload failed, still running the previous configuration: " + re.escape(expected) + "$"
    )
    assert exchange(supervisor.inet("echo"), b"ping") == b"base ping"
    status = run_cli("status", "-c", path)
    assert status.returncode == 0, status.stderr
    assert re.fullmatch(
        r"last reload: FAILED at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d: " + re.escape(expected),
        status.stdout.splitlines()[1],
    ), status.stdout


def test_reload_of_a_file_whose_pidfile_cannot_be_read_reports_the_syntax_error(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    """The syntax error is on the pidfile's own line: the instance cannot be found from the
    file; the error is reported as `check` reports it, and the running configuration is
    untouched."""
    supervisor = start_supervisor(config_text(sockdir))
    path = str(supervisor.config)
    text = supervisor.config.read_text()
    broken = re.sub(r'(?m)^pidfile = "(.*)"$', r'pidfile = "\1', text)
    assert broken != text
    supervisor.config.write_text(broken)
    expected = one_line_error(run_cli("check", "-c", path), EX_CONFIG)

    result = run_cli("reload", "-c", path)

    assert one_line_error(result, EX_CONFIG).endswith(expected)
    assert exchange(supervisor.inet("echo"), b"ping") == b"base ping"


def test_reload_onto_an_address_in_use_is_rejected_and_changes_nothing(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(config_text(sockdir))
    path = str(supervisor.config)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        supervisor.config.write_text(
            config_text(
                sockdir,
                ECHO + server_table("extra", "BaseEchoHandler", address=f"tcp://127.0.0.1:{port}"),
            )
        )
        message = (
            f"{path}: servers.extra: cannot bind tcp://127.0.0.1:{port} (Address already in use)"
        )

        result = run_cli("reload", "-c", path)

        assert one_line_error(result, EX_OSERR) == f"reload rejected: {message}"
        assert exchange(supervisor.inet("echo"), b"ping") == b"base ping"
        status = run_cli("status", "-c", path)
        assert re.fullmatch(
            r"last reload: FAILED at \S+ \S+: " + re.escape(message),
            status.stdout.splitlines()[1],
        ), status.stdout
        assert server_rows(status.stdout) == [
            ["echo", supervisor.addresses["echo"], "fork", "0/40", "1", "0", "0"]
        ]

    # The address is free again: the same file now goes through.
    start = len(supervisor.lines)
    result = run_cli("reload", "-c", path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "reloaded: added extra\n", "")
    supervisor.wait_for_log(rf"extra: listening on tcp://127\.0\.0\.1:{port} ", start=start)
    assert exchange(("127.0.0.1", port), b"now") == b"base now"


# --- stop ---------------------------------------------------------------------------------


def test_stop_waits_for_the_supervisor_to_exit(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(config_text(sockdir, ECHO + HELD))
    with connect(supervisor.inet("held")) as held:
        assert int(readline(held)) > 0  # the request is running
        with cli_process("stop", "-c", str(supervisor.config)) as stop:
            supervisor.wait_for_log(r"SIGTERM: stopping; 1 requests in progress")
            assert stop.poll() is None, "stop returned while the supervisor was still running"
            held.sendall(b"done\n")
            assert readline(held) == b"bye\n"
            assert supervisor.wait() == 0
            out, err = stop.communicate(timeout=CLI_TIMEOUT)
    assert (stop.returncode, out, err) == (0, f"stopped supervisor (pid {supervisor.pid})\n", "")
    assert os.listdir(sockdir) == []  # pidfile and control socket removed


def test_stop_fast_terminates_requests_at_once(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(config_text(sockdir, HELD, shutdown_timeout=600))
    with connect(supervisor.inet("held")) as held:
        child = psutil.Process(int(readline(held)))
        with cli_process("stop", "--fast", "-c", str(supervisor.config)) as stop:
            assert supervisor.wait(timeout=10) == 0
            out, err = stop.communicate(timeout=CLI_TIMEOUT)
        assert held.recv(16) == b""  # the request was cut short: its connection is closed
    assert (stop.returncode, out, err) == (0, f"stopped supervisor (pid {supervisor.pid})\n", "")
    assert not child.is_running()
    assert "SIGQUIT: stopping; 1 requests in progress, waiting up to 0s for them" in supervisor.log
    assert f"held: child {child.pid} killed by signal SIGTERM" in supervisor.log


# --- finding the instance -----------------------------------------------------------------


@pytest.mark.parametrize("command", ["reload", "stop", "status"])
@pytest.mark.parametrize("pidfile", ["missing", "stale"])
def test_commands_with_nothing_running(
    tmp_path: Path,
    sockdir: Path,
    unrelated_process: subprocess.Popen[bytes],
    command: str,
    pidfile: str,
) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_text(config_text(sockdir))
    if pidfile == "stale":  # a live process, but no supervisor holds the file's lock
        (sockdir / "sv.pid").write_text(f"{unrelated_process.pid}\n")

    result = run_cli(command, "-c", str(path))

    assert one_line_error(result, EX_UNAVAILABLE) == f"{sockdir}/sv.pid: supervisor is not running"
    assert unrelated_process.poll() is None, f"{command} signalled the pid in a stale pidfile"


@pytest.mark.parametrize("command", ["reload", "stop", "status"])
def test_commands_without_a_pidfile_are_a_usage_error(tmp_path: Path, command: str) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_text(ECHO)
    result = run_cli(command, "-c", str(path))
    assert one_line_error(result, EX_USAGE) == (
        f"{path}: no [supervisor] pidfile is configured: pass --pidfile PATH"
    )


def test_pidfile_option_finds_the_instance_without_its_configuration(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(config_text(sockdir))
    pidfile = str(sockdir / "sv.pid")

    status = run_cli("status", "--pidfile", pidfile)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"supervisor: running, pid {supervisor.pid}, ")

    reload = run_cli("reload", "--pidfile", pidfile)
    assert (reload.returncode, reload.stdout, reload.stderr) == (
        0,
        "reloaded: no server changed\n",
        "",
    )

    with cli_process("stop", "--pidfile", pidfile) as stop:
        assert supervisor.wait() == 0
        out, err = stop.communicate(timeout=CLI_TIMEOUT)
    assert (stop.returncode, out, err) == (0, f"stopped supervisor (pid {supervisor.pid})\n", "")


# --- the control socket -------------------------------------------------------------------

AS_ANOTHER_USER = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    print("connect: permission denied")
    sys.exit()
try:
    sock.sendall(b'{"command": "status"}\\n')
    answer = sock.recv(65536)
except (BrokenPipeError, ConnectionResetError):
    answer = b""
print("answer:", answer.decode() or "connection closed")
sock.close()
"""


def run_as_nobody(python: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-I", "-S", *args],
        capture_output=True,
        text=True,
        cwd="/",
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        timeout=CLI_TIMEOUT,
        check=False,
    )


def python_for_nobody() -> str:
    """A Python interpreter that user nobody may run (this venv's may sit under /root)."""
    for python in (sys.executable, "/usr/bin/python3"):
        with contextlib.suppress(OSError):
            if run_as_nobody(python, "-c", "pass").returncode == 0:
                return python
    pytest.skip("no Python interpreter that user nobody can run")


def ask_as_nobody(python: str, path: Path) -> str:
    result = run_as_nobody(python, "-c", AS_ANOTHER_USER, str(path))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


def test_control_socket_answers_only_its_own_user(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(config_text(sockdir))
    path = sockdir / "sv.sock"
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    if os.geteuid() != 0:
        pytest.skip("connecting as another user needs root")
    python = python_for_nobody()

    assert ask_as_nobody(python, path) == "connect: permission denied\n"
    # Past the file permissions (a directory and socket opened up by mistake), the supervisor
    # still checks who is asking.
    sockdir.chmod(0o711)
    path.chmod(0o666)
    assert ask_as_nobody(python, path) == "answer: connection closed\n"
    supervisor.wait_for_log(
        rf"WARNING supervisor\[{supervisor.pid}\]: control: refused a request from uid {NOBODY}$"
    )
    for _ in range(5):  # a flood of them is one line per 10 s, not one per connection
        assert ask_as_nobody(python, path) == "answer: connection closed\n"
    assert status_of(sockdir)["pid"] == supervisor.pid  # (the loop has seen them all)
    assert sum("control: refused a request" in line for line in supervisor.lines) == 1

    assert status_of(sockdir)["pid"] == supervisor.pid
    assert exchange(supervisor.inet("echo"), b"ping") == b"base ping"


def ask_raw(path: Path, data: bytes) -> object:
    with connect(str(path)) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def test_control_socket_protocol(start_supervisor: StartSupervisor, sockdir: Path) -> None:
    supervisor = start_supervisor(config_text(sockdir))
    path = sockdir / "sv.sock"

    bad = {"ok": False, "error": 'bad request: expected {"command": NAME}'}
    assert ask_raw(path, b"garbage\n") == bad
    assert ask_raw(path, b'["status"]\n') == bad
    assert ask_raw(path, b'{"command": 1}\n') == bad
    assert control.request(str(path), "frobnicate") == {
        "ok": False,
        "error": "unknown command 'frobnicate'",
    }
    answer = ask_raw(path, b'{"command": "status"}')  # no newline: the end of input will do
    assert isinstance(answer, dict)
    assert (answer["ok"], answer["pid"]) == (True, supervisor.pid)

    with connect(str(path)) as silent:  # connects and sends nothing
        assert exchange(supervisor.inet("echo"), b"ping") == b"base ping"
        assert status_of(sockdir)["pid"] == supervisor.pid
        silent.sendall(b'{"command": "status"}\n')  # still served afterwards
        assert json.loads(readline(silent))["pid"] == supervisor.pid


def test_a_control_request_pending_during_a_fork_is_not_held_by_the_child(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(config_text(sockdir, HELD))
    with (
        connect(str(sockdir / "sv.sock")) as pending,
        connect(supervisor.inet("held")) as held,
    ):
        child = int(readline(held))  # forked while `pending` was connected
        pending.sendall(b'{"command": "status"}\n')
        chunks = []
        while chunk := pending.recv(65536):  # the end of the answer: not held by the child
            chunks.append(chunk)
        assert json.loads(b"".join(chunks))["children"] == [{"pid": child, "server": "held"}]
        held.sendall(b"done\n")
        assert readline(held) == b"bye\n"


def test_stop_by_another_user_is_refused_in_one_line(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("running the command as another user needs root")
    supervisor = start_supervisor(config_text(sockdir))
    sockdir.chmod(0o755)  # nobody may read the pidfile, but not signal its process
    (sockdir / "sv.pid").chmod(0o644)
    python = python_for_nobody()
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path[1:1] = {sys.path[1:]!r}; "
        "from supervisor.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = run_as_nobody(python, "-c", script, "stop", "--pidfile", str(sockdir / "sv.pid"))
    assert result.returncode == os.EX_NOPERM, result.stderr
    assert result.stderr == (
        f"not permitted to signal pid {supervisor.pid} "
        "(run it as root or as the supervisor's user)\n"
    )
    assert supervisor.process.poll() is None

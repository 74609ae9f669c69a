"""A local user cannot turn the pidfile's directory against root (issue 13, root only).

The attacks, each played for real: user nobody makes the directory first and plants a symlink
as the pidfile (root's start would overwrite its target), or a pidfile and a control socket of
their own (root's `stop` would signal a process of their choosing, root's `reload` print a
forged outcome). The supervisor refuses such a directory, and a control command believes a
pidfile only if the process it names holds its lock and also listens on the control socket.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.configs import ECHO, METRICS_ANY_PORT, supervisor_table
from tests.conftest import one_line_error, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to give files away)")

NOBODY = 65534
# Plays a fake supervisor: locks the pidfile argv[1], writes argv[2] there (PID: its own pid),
# and if argv[3] is given answers every connection to a unix socket there with a forged
# "reloaded". Prints "ready".
FAKE = """
import fcntl, os, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.write(fd, sys.argv[2].replace("PID", str(os.getpid())).encode())
if len(sys.argv) > 3:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sys.argv[3])
    listener.listen()
print("ready", flush=True)
while len(sys.argv) > 3:
    conn, _ = listener.accept()
    try:
        conn.recv(4096)
        conn.sendall(b'{"ok": true, "message": "forged"}\\n')
    except OSError:
        pass
    conn.close()
sys.stdin.read()
"""


@pytest.fixture
def fakes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.communicate()


def fake(fakes: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", FAKE, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    fakes.append(process)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A directory anyone may create entries in, as /tmp (sticky, mode 1777)."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    tmp_path.chmod(0o755)
    return directory


def planted(shared: Path) -> Path:
    """The directory user nobody made first, where the supervisor's files would go."""
    directory = shared / "supervisor"
    directory.mkdir(mode=0o755)
    os.chown(directory, NOBODY, NOBODY)
    return directory


def test_a_directory_someone_else_made_first_is_refused(shared: Path, tmp_path: Path) -> None:
    directory = planted(shared)
    target = tmp_path / "precious"
    target.write_text("root's data\n")
    (directory / "supervisor.pid").symlink_to(target)
    config = tmp_path / "supervisor.toml"
    config.write_text(supervisor_table(pidfile=f"{directory}/supervisor.pid") + ECHO)
    config.write_text(config.read_text() + METRICS_ANY_PORT)
    expected = (
        f"{config}: supervisor.pidfile: {directory}: belongs to nobody (uid 65534), not to "
        "root or the supervisor's user"
    )
    for command in ("check", "run"):
        assert one_line_error(run_cli(command, "-c", str(config)), os.EX_NOPERM) == expected
    assert target.read_text() == "root's data\n"
    assert sorted(os.listdir(directory)) == ["supervisor.pid"]  # no control socket either


def test_control_commands_believe_nothing_in_someone_elses_directory(
    shared: Path, fakes: list[subprocess.Popen[str]], unrelated_process: subprocess.Popen[bytes]
) -> None:
    directory = planted(shared)
    pidfile = directory / "supervisor.pid"
    fake(fakes, str(pidfile), f"{unrelated_process.pid}\n", str(directory / "supervisor.sock"))
    for command in ("stop", "reload", "status"):
        line = one_line_error(run_cli(command, "--pidfile", str(pidfile)), os.EX_NOPERM)
        assert line == (
            f"{directory}: belongs to nobody (uid 65534), not to root or the supervisor's user"
        )
    assert unrelated_process.poll() is None  # not signalled


def test_a_pid_that_does_not_hold_the_lock_is_never_signalled(
    tmp_path: Path,
    fakes: list[subprocess.Popen[str]],
    unrelated_process: subprocess.Popen[bytes],
) -> None:
    """In a directory of root's: a pidfile naming another process than its lock holder."""
    pidfile = tmp_path / "supervisor.pid"
    locker = fake(fakes, str(pidfile), f"{unrelated_process.pid}\n")
    line = one_line_error(run_cli("stop", "--pidfile", str(pidfile)), os.EX_UNAVAILABLE)
    assert line == (
        f"{pidfile}: names pid {unrelated_process.pid}, but pid {locker.pid} holds its lock: "
        "not believed"
    )
    assert unrelated_process.poll() is None
    assert locker.poll() is None


def test_a_control_socket_of_another_process_is_not_believed(
    tmp_path: Path, fakes: list[subprocess.Popen[str]]
) -> None:
    """The pidfile is right (its holder's pid) but someone else listens on the control socket:
    no forged `reloaded`."""
    pidfile, control = tmp_path / "supervisor.pid", tmp_path / "supervisor.sock"
    holder = fake(fakes, str(pidfile), "PID\n")
    impostor = fake(fakes, str(tmp_path / "other.pid"), "PID\n", str(control))
    for command in ("reload", "status"):
        result = run_cli(command, "--pidfile", str(pidfile))
        line = one_line_error(result, os.EX_UNAVAILABLE)
        assert line == (
            f"{control}: answered by pid {impostor.pid}, not by the supervisor ({holder.pid}): "
            "not believed"
        )
    assert "forged" not in result.stdout


def test_a_status_answer_it_cannot_read_is_one_line(
    tmp_path: Path, fakes: list[subprocess.Popen[str]]
) -> None:
    """A process that holds the pidfile and listens (a supervisor of another version, say) but
    answers something else than a status: one line and EX_PROTOCOL, no KeyError traceback."""
    pidfile = tmp_path / "supervisor.pid"
    fake(fakes, str(pidfile), "PID\n", str(tmp_path / "supervisor.sock"))
    line = one_line_error(run_cli("status", "--pidfile", str(pidfile)), os.EX_PROTOCOL)
    assert line == (f"{pidfile}: the supervisor's status answer cannot be read (KeyError: 'state')")


def test_a_link_someone_else_made_to_a_directory_of_theirs_is_refused(
    shared: Path, tmp_path: Path
) -> None:
    """The expected directory name, in /tmp, made a symlink by user nobody to a directory of
    their own (which, once resolved, has only root and nobody above it)."""
    theirs = tmp_path / "nobody"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    link = shared / "supervisor"
    link.symlink_to(theirs)
    os.lchown(link, NOBODY, NOBODY)
    config = tmp_path / "supervisor.toml"
    config.write_text(supervisor_table(pidfile=f"{link}/supervisor.pid") + ECHO + METRICS_ANY_PORT)
    expected = (
        f"{config}: supervisor.pidfile: the symlink {link} could be pointed elsewhere by nobody "
        "(uid 65534)"
    )
    for command in ("check", "run"):
        assert one_line_error(run_cli(command, "-c", str(config)), os.EX_NOPERM) == expected
    assert os.listdir(theirs) == []
    for command in ("stop", "reload", "status"):
        result = run_cli(command, "--pidfile", str(link / "supervisor.pid"))
        assert one_line_error(result, os.EX_NOPERM).startswith(f"the symlink {link} could be")


@pytest.mark.parametrize(
    ("toml", "status", "ends"),
    [
        ('pidfile = "run/.."', os.EX_CONFIG, "supervisor.pidfile: must name a file, got 'run/..'"),
        (
            'pidfile = "run/supervisor.pid"\nlog_file = "logs/supervisor.pid"',
            os.EX_CONFIG,
            "/logs/supervisor.pid is also supervisor.pidfile, through a link",
        ),
    ],
    ids=["pidfile-is-a-directory", "log-file-is-the-pidfile-through-a-link"],
)
def test_check_and_run_refuse_the_same_pidfile_mistakes(
    tmp_path: Path, toml: str, status: int, ends: str
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "logs").symlink_to(tmp_path / "run")
    config = tmp_path / "supervisor.toml"
    config.write_text(f"[supervisor]\n{toml}\n" + ECHO + METRICS_ANY_PORT)
    for command in ("check", "run"):
        line = one_line_error(run_cli(command, "-c", str(config)), status)
        assert line.endswith(ends), line

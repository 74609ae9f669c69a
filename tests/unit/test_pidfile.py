"""PidFile and running_pid, with real processes holding, losing and forking the lock.

Every process is started through the `spawn` fixture (or `subprocess.run` with a timeout) and
killed and reaped by it; tests synchronise on the lines the processes print, never on sleeps.
"""

import contextlib
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from supervisor.pidfile import AlreadyRunning, NotOurs, PidFile, PidFileError, running_pid

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
TIMEOUT = 30.0

# Enters PidFile(argv[1]) and reports how it went: "entered PID" or "STATUS MESSAGE".
TRY_ENTER = """
import os, sys
from supervisor.errors import SupervisorError
from supervisor.pidfile import PidFile
try:
    with PidFile(sys.argv[1]):
        print("entered", os.getpid())
except SupervisorError as exc:
    print(exc.exit_status, exc)
"""

# Holds PidFile(argv[1]) until its stdin closes.
HOLDER = """
import sys
from supervisor.pidfile import PidFile
with PidFile(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""

# Locks argv[1] with lockf and writes argv[2] into it, without PidFile, until stdin closes.
LOCKER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.write(fd, sys.argv[2].replace("PID", str(os.getpid())).encode())
print("locked", flush=True)
sys.stdin.read()
"""

# Holds PidFile(argv[1]), forks a child that keeps the inherited descriptor and waits on stdin,
# prints the child's pid and exits at once without leaving the context.
FORKING_HOLDER = """
import os, sys
from supervisor.pidfile import PidFile
pidfile = PidFile(sys.argv[1]).__enter__()
child = os.fork()
if child == 0:
    try:
        os.fstat(pidfile.fileno())
        sys.stdin.read()
    finally:
        os._exit(0)
print(child, flush=True)
os._exit(0)
"""

# Holds PidFile(argv[1]); a forked child calls __exit__ (as an atexit handler would) and exits;
# then the holder reports whether the file is still there, and waits on stdin.
CHILD_EXITS = """
import os, sys
from supervisor.pidfile import PidFile
with PidFile(sys.argv[1]) as pidfile:
    child = os.fork()
    if child == 0:
        try:
            pidfile.__exit__(None, None, None)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    print("exists" if os.path.exists(sys.argv[1]) else "removed", flush=True)
    sys.stdin.read()
"""

# Runs as a python-daemon daemon with PidFile(argv[1]); reports "locked PID" on fd argv[2] and
# leaves the context when fd argv[3] reaches end of file.
DAEMON = """
import os, sys, daemon
from supervisor.pidfile import PidFile
status, stop = int(sys.argv[2]), int(sys.argv[3])
with daemon.DaemonContext(pidfile=PidFile(sys.argv[1]), files_preserve=[status, stop]):
    os.write(status, f"locked {os.getpid()}\\n".encode())
    os.read(stop, 1)
"""

Spawn = Callable[..., subprocess.Popen[str]]


def written(pidfile: PidFile) -> str:
    """The content of an entered pidfile, read through its own descriptor.

    Not `path.read_text()`: closing any other descriptor for the file would release the lock
    this process holds on it (POSIX record locks).
    """
    return os.pread(pidfile.fileno(), 100, 0).decode()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start `python -c SCRIPT ARGS...` (stdin and stdout piped); kill and reap it at the end."""
    processes: list[subprocess.Popen[str]] = []

    def start(
        script: str, *args: str, cwd: Path | None = None, pass_fds: Sequence[int] = ()
    ) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=cwd,
            pass_fds=pass_fds,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
        process.wait(TIMEOUT)


@pytest.fixture
def strays() -> Iterator[list[psutil.Process]]:
    """Processes that are not our children (forked by a subprocess): killed and awaited."""
    processes: list[psutil.Process] = []
    yield processes
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=TIMEOUT)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "supervisor" / "supervisor.pid"


def readline(process: subprocess.Popen[str]) -> str:
    """The next line the process prints; fails if it exits first."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"process {process.pid} exited with {process.wait(TIMEOUT)} before printing"
    return line.rstrip("\n")


def try_enter(path: Path) -> str:
    """What another process gets when it enters PidFile(path): "entered PID" or "STATUS MSG"."""
    result = subprocess.run(
        [sys.executable, "-c", TRY_ENTER, str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT,
        check=True,
    )
    return result.stdout.rstrip("\n")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return int(process.stdout)


def test_enter_writes_our_pid_and_holds_the_lock(path: Path) -> None:
    with PidFile(path) as pidfile:
        assert written(pidfile) == f"{os.getpid()}\n"
        assert not os.get_inheritable(pidfile.fileno())
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 & ~umask
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755 & ~umask
        assert try_enter(path) == f"69 {path}: supervisor already running as pid {os.getpid()}"
        assert written(pidfile) == f"{os.getpid()}\n"


def test_exit_removes_the_file_and_frees_the_lock(path: Path) -> None:
    pidfile = PidFile(path)
    with pidfile:
        pass
    assert not path.exists()
    with pytest.raises(ValueError, match="not entered"):
        pidfile.fileno()
    assert try_enter(path).startswith("entered ")
    with pidfile:  # entered again after exit
        assert written(pidfile) == f"{os.getpid()}\n"
    assert not path.exists()


def test_running_pid_is_a_live_holder_then_none_once_it_is_killed(path: Path, spawn: Spawn) -> None:
    holder = spawn(HOLDER, str(path))
    assert readline(holder) == "locked"
    assert running_pid(path) == holder.pid
    with pytest.raises(AlreadyRunning) as caught:
        PidFile(path).__enter__()
    assert str(caught.value) == f"{path}: supervisor already running as pid {holder.pid}"
    assert caught.value.exit_status == os.EX_UNAVAILABLE == 69
    holder.kill()
    holder.wait(TIMEOUT)
    assert path.read_text() == f"{holder.pid}\n"  # left behind: stale
    assert running_pid(path) is None


def test_holder_without_a_readable_pid(path: Path, spawn: Spawn) -> None:
    path.parent.mkdir(parents=True)
    locker = spawn(LOCKER, str(path), "starting\n")
    assert readline(locker) == "locked"
    with pytest.raises(NotOurs) as refused:
        running_pid(path)
    assert str(refused.value) == (
        f"{path}: names no pid, but pid {locker.pid} holds its lock: not believed"
    )
    with pytest.raises(AlreadyRunning) as caught:
        PidFile(path).__enter__()
    assert str(caught.value) == f"{path}: another process holds the lock"
    assert caught.value.pid is None


def test_a_stale_file_with_a_dead_pid_is_taken_over(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(f"{dead_pid()}\n")
    assert running_pid(path) is None
    with PidFile(path) as pidfile:
        assert written(pidfile) == f"{os.getpid()}\n"
    assert not path.exists()


def test_a_stale_file_with_an_unrelated_live_pid_is_taken_over(path: Path, spawn: Spawn) -> None:
    sleeper = spawn("import sys; print('up', flush=True); sys.stdin.read()")
    assert readline(sleeper) == "up"
    path.parent.mkdir(parents=True)
    for unrelated in (sleeper.pid, os.getpid()):
        path.write_text(f"{unrelated}\n")
        assert running_pid(path) is None
    with PidFile(path) as pidfile:
        assert written(pidfile) == f"{os.getpid()}\n"
    assert sleeper.poll() is None


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"garbage\n", b"12abc\n", b"-1\n", b"0\n", b"1 2\n", b"9" * 20 + b"\n"],
)
def test_garbage_content_is_stale(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert running_pid(path) is None
    with PidFile(path) as pidfile:
        assert written(pidfile) == f"{os.getpid()}\n"


def test_running_pid_of_a_missing_file(tmp_path: Path) -> None:
    assert running_pid(tmp_path / "missing.pid") is None
    (tmp_path / "file").write_text("")
    assert running_pid(tmp_path / "file" / "supervisor.pid") is None


def test_a_held_lock_is_trusted_whatever_the_clock_says(path: Path, spawn: Spawn) -> None:
    """A wall clock stepped after start (NTP at boot) must not make a live instance look dead."""
    path.parent.mkdir(parents=True)
    locker = spawn(LOCKER, str(path), "PID\n")
    assert readline(locker) == "locked"
    assert running_pid(path) == locker.pid
    os.utime(path, (0, 0))  # the file now looks older than every running process
    assert running_pid(path) == locker.pid


def test_a_forked_child_does_not_keep_the_lock(
    path: Path, spawn: Spawn, strays: list[psutil.Process]
) -> None:
    holder = spawn(FORKING_HOLDER, str(path))
    child = psutil.Process(int(readline(holder)))
    strays.append(child)
    assert holder.wait(TIMEOUT) == 0
    assert child.is_running()
    assert child.status() != psutil.STATUS_ZOMBIE
    assert running_pid(path) is None
    with PidFile(path) as pidfile:
        assert written(pidfile) == f"{os.getpid()}\n"
        assert child.is_running()
    assert holder.stdin is not None
    holder.stdin.close()  # the child's stdin reaches end of file: it exits
    psutil.wait_procs([child], timeout=TIMEOUT)


def test_exit_in_a_forked_child_keeps_the_file(path: Path, spawn: Spawn) -> None:
    holder = spawn(CHILD_EXITS, str(path))
    assert readline(holder) == "exists"
    assert running_pid(path) == holder.pid


@pytest.mark.parametrize("how", ["replaced", "rewritten"])
def test_exit_leaves_a_file_that_is_no_longer_ours(path: Path, how: str) -> None:
    with PidFile(path):
        if how == "replaced":  # a new file, even one with our pid, is someone else's
            other = path.with_name("other.pid")
            other.write_text(f"{os.getpid()}\n")
            other.replace(path)
        else:  # the same file, holding another pid
            path.write_text("12345\n")
        content = path.read_text()
    assert path.read_text() == content


def test_os_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "supervisor.pid"
    with pytest.raises(PidFileError) as caught:
        PidFile(target).__enter__()
    assert str(caught.value) == (
        f"{target}: cannot create the directory of the pidfile (File exists)"
    )
    assert caught.value.exit_status == os.EX_OSERR


def test_as_the_pidfile_of_a_daemon_context(
    tmp_path: Path, spawn: Spawn, strays: list[psutil.Process]
) -> None:
    """Entered after detaching, with a relative path although the daemon changes to `/`."""
    status_read, status_write = os.pipe()
    stop_read, stop_write = os.pipe()
    try:
        spawn(
            DAEMON,
            "supervisor.pid",
            str(status_write),
            str(stop_read),
            cwd=tmp_path,
            pass_fds=(status_write, stop_read),
        )
        os.close(status_write)
        os.close(stop_read)
        status_write = stop_read = -1
        with os.fdopen(status_read) as status:
            status_read = -1
            word, pid = status.readline().split()
            daemon = psutil.Process(int(pid))
            strays.append(daemon)
            assert word == "locked"
            path = tmp_path / "supervisor.pid"
            assert path.read_text() == f"{daemon.pid}\n"
            assert running_pid(path) == daemon.pid
            os.close(stop_write)
            stop_write = -1
            assert status.read() == ""  # every copy closed: the daemon has exited
        assert not path.exists()
    finally:
        for fd in (status_read, status_write, stop_read, stop_write):
            if fd >= 0:
                os.close(fd)


# -- planted files and forged pids (issue 13) --------------------------------------------------


def test_a_symlink_at_the_pidfile_is_never_followed(path: Path, tmp_path: Path) -> None:
    """A root supervisor would truncate the link's target and write its pid into it."""
    target = tmp_path / "precious"
    target.write_text("do not touch\n")
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    with pytest.raises(PidFileError) as caught:
        PidFile(path).__enter__()
    assert str(caught.value) == f"{path}: cannot create the pidfile (it is a symbolic link)"
    with pytest.raises(PidFileError, match="cannot read the pidfile \\(it is a symbolic link\\)"):
        running_pid(path)
    assert target.read_text() == "do not touch\n"
    assert path.is_symlink()


def test_a_fifo_at_the_pidfile_is_refused_without_waiting(path: Path) -> None:
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    with pytest.raises(PidFileError, match="cannot create the pidfile \\(not a regular file\\)"):
        PidFile(path).__enter__()
    with pytest.raises(PidFileError, match="cannot read the pidfile \\(not a regular file\\)"):
        running_pid(path)


def test_a_pid_that_does_not_hold_the_lock_is_not_believed(
    path: Path, spawn: Spawn, unrelated_process: subprocess.Popen[bytes]
) -> None:
    """Someone locks the file and writes another process's pid in it (one `stop` would then
    signal): refused, naming both."""
    path.parent.mkdir(parents=True)
    locker = spawn(LOCKER, str(path), f"{unrelated_process.pid}\n")
    assert readline(locker) == "locked"
    with pytest.raises(NotOurs) as caught:
        running_pid(path)
    assert str(caught.value) == (
        f"{path}: names pid {unrelated_process.pid}, but pid {locker.pid} holds its lock: "
        "not believed"
    )


def test_a_shared_lock_is_nobodys_pidfile_lock(path: Path, spawn: Spawn) -> None:
    """A supervisor's lock is exclusive: a reader's shared lock on a stale file is not one."""
    path.parent.mkdir(parents=True)
    path.write_text(f"{dead_pid()}\n")
    reader = spawn(
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
        "fcntl.lockf(fd, fcntl.LOCK_SH); print('locked', flush=True); sys.stdin.read()",
        str(path),
    )
    assert readline(reader) == "locked"
    assert running_pid(path) is None

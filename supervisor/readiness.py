"""`run --daemon` returns only when the daemon is ready, with its start-up status.

daemon(7): the process that starts a daemon exits only once the daemon has initialised and
written its pidfile, and an error the daemon meets after it detached reaches the caller. So
the starting process forks before it detaches: the child goes on to become the daemon (with
python-daemon's double fork), and the parent waits on a pipe for one line from it, `ready` or
`error STATUS LINE`, then exits with that status (and prints that line). End of file without
either (the daemon died, or its prefork workers, which inherited the pipe, saw it die) is a
failure too.
"""

import contextlib
import os
import signal
import sys

ERROR_STATUS = os.EX_SOFTWARE  # the daemon died before it said anything


class ReadyPipe:
    """The daemon's end: says `ready` or `error` once, then is closed."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def ready(self) -> None:
        self._send(b"ready\n")

    def failed(self, status: int, line: str) -> None:
        self._send(f"error {status} {' '.join(line.split())}\n".encode())

    def _send(self, message: bytes) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return  # said already
        try:
            os.write(fd, message)  # (one line, < PIPE_BUF: written whole)
        except OSError:
            pass  # the starting process is gone (killed): nobody is waiting
        finally:
            os.close(fd)

    def close_in_child(self) -> None:
        """In a forked child (a prefork worker started before `ready`): not its to send."""
        if self.fd is not None:
            os.close(self.fd)


def split() -> ReadyPipe | None:
    """Fork. In the parent (the starting process), wait for the daemon's word, print its
    error if any, and exit with its status: this never returns there. In the child, return
    the pipe to send it on."""
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        return ReadyPipe(write_fd)
    os.close(write_fd)
    for signum in (signal.SIGINT, signal.SIGTERM):  # (held until now: see signals.defer)
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    status, line = wait(read_fd)
    # The child exits as soon as it has forked (python-daemon's first fork): collected here,
    # or it would be left to whoever inherits it as a zombie.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if line:
        print(line, file=sys.stderr, flush=True)
    os._exit(status)  # (no clean-up here: the sockets and files are the daemon's now)


def wait(fd: int) -> tuple[int, str]:
    """The daemon's status and error line, once it has said (or died)."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
        if data.endswith(b"\n"):
            break
    os.close(fd)
    word, _, rest = data.decode(errors="replace").rstrip("\n").partition(" ")
    if word == "ready":
        return 0, ""
    status_text, _, line = rest.partition(" ")
    if word == "error" and status_text.isdigit() and len(status_text) < 4:
        return int(status_text) or ERROR_STATUS, line
    return ERROR_STATUS, "supervisor: the daemon exited before it was ready (see its log_file)"

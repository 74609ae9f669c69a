"""Clients of the bundled services, run inside the container (nothing is published)."""

import re

from tests.systemd.conftest import Booted

CLIENT_TIMEOUT = 20.0


def echo_tcp(container: Booted, port: int = 7007, text: str = "hello tcp") -> str:
    """One line through nc to an echo server; what came back."""
    return container.exec(
        "nc",
        "-N",
        "-w",
        "10",
        "127.0.0.1",
        str(port),
        stdin=text + "\n",
        timeout=CLIENT_TIMEOUT,
        check=False,
    ).stdout


def echo_udp(container: Booted, text: str = "hello udp") -> str:
    """One datagram through socat to the UDP echo server; the reply (5 s to come)."""
    return container.exec(
        "socat", "-T", "5", "-", "UDP:127.0.0.1:7007", stdin=text + "\n", timeout=CLIENT_TIMEOUT
    ).stdout


def echo_unix(container: Booted, text: str = "hello unix", user: str | None = None) -> str:
    """One line through socat to the unix echo socket, as `user` (runuser) or root."""
    command = ["socat", "-", "UNIX-CONNECT:/run/supervisor/echo.sock"]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    return container.exec(*command, stdin=text + "\n", timeout=CLIENT_TIMEOUT, check=False).stdout


# A unix datagram client needs an address of its own for the reply: an autobound abstract one.
DAYTIME = """
import socket
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("")
sock.settimeout(5)
sock.sendto(b"?", "/run/supervisor/daytime.sock")
print(sock.recv(512).decode(), end="")
"""


def daytime_unixgram(container: Booted, user: str | None = None) -> str:
    """The daytime server's answer to a datagram on its unix socket, as `user` or root."""
    command = ["python3", "-c", DAYTIME]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    return container.exec(*command, timeout=CLIENT_TIMEOUT, check=False).stdout


def http_get(container: Booted, port: int, path: str) -> tuple[int, str]:
    """curl's status code and body."""
    done = container.exec(
        "curl",
        "--silent",
        "--max-time",
        "10",
        "--write-out",
        "\n%{http_code}",
        f"http://127.0.0.1:{port}{path}",
        check=False,
        timeout=CLIENT_TIMEOUT,
    )
    body, _, code = done.stdout.rpartition("\n")
    return int(code or 0), body


def listening_inodes(container: Booted) -> dict[str, int]:
    """The inode of each IP socket listening in the container, by "tcp 127.0.0.1:7007"."""
    inodes: dict[str, int] = {}
    for line in container.exec("ss", "-Htulne").stdout.splitlines():
        fields = line.split()
        match = re.search(r"\bino:(\d+)", line)
        if len(fields) > 4 and match:
            inodes[f"{fields[0]} {fields[4]}"] = int(match.group(1))
    return inodes


def socket_inodes(container: Booted, pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds (its /proc/PID/fd links): --privileged,
    because root in the container has no CAP_SYS_PTRACE to read another user's fds."""
    out = container.exec("ls", "-l", f"/proc/{pid}/fd", privileged=True).stdout
    return {int(inode) for inode in re.findall(r"socket:\[(\d+)\]", out)}

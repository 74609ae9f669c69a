"""The systemd suite's fixtures: the project's units under a real systemd 252 as PID 1.

Each container boots Debian bookworm's systemd in podman (`--systemd=always`, with SYS_ADMIN so
that the unit's mount-namespace hardening really applies; without it systemd silently skips
it) and is installed into exactly as README "systemd" tells a new user: a venv in
/opt/supervisor, the system user, etc/systemd.toml as /etc/supervisor/supervisor.toml, the two
units, `systemctl enable --now`. The container has no registry: the project's wheel and its
dependencies' are made on the host and copied in. Nothing is published: the clients (nc, socat,
curl, python3) run inside the container with `podman exec`, on its own loopback.

The image (systemd-image, debootstrap) is built once per machine and rebuilt only when the
script changes (its digest is the image's label). Every container is removed at the end of the
session, whatever happened.
"""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.podman import ENV, podman

HERE = Path(__file__).resolve().parent
IMAGE = "localhost/socket-supervisor-systemd:252"
INPUTS_LABEL = "socket-supervisor.inputs"
BUILD_SCRIPT = HERE / "systemd-image"
BUILD_TIMEOUT = 900.0
BOOT_TIMEOUT = 60.0
UNIT = "supervisor.service"
CONFIG = "/etc/supervisor/supervisor.toml"
SYSTEMD_TOML = ROOT / "etc" / "systemd.toml"  # the configuration README "systemd" installs

# README "systemd", Installing, with the wheels in /root/wheels in place of the source tree.
INSTALL = f"""
set -e
cd /root/src
python3 -m venv /opt/supervisor
/opt/supervisor/bin/pip install -q --no-index --find-links /root/wheels socket-supervisor
useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin supervisor
install -D -m 0644 etc/systemd.toml {CONFIG}
install -m 0644 systemd/supervisor.service systemd/supervisor.socket /etc/systemd/system/
"""
ENABLE = "systemctl daemon-reload && systemctl enable --now supervisor.service"

STOP_TIMEOUT = 30.0  # the unit's TimeoutStopSec=
# The suite's own drop-in: the unit's WatchdogSec=30 would make the test wait half a minute.
SHORT_WATCHDOG = """
mkdir -p /etc/systemd/system/supervisor.service.d
printf '[Service]\\nWatchdogSec=3s\\n' > /etc/systemd/system/supervisor.service.d/watchdog.conf
"""
# What supervisor.socket listens on, as clients.listening_inodes names them.
SOCKETS = ["tcp 127.0.0.1:7007", "udp 127.0.0.1:7007", "tcp 127.0.0.1:7080"]


def deadline_loop(timeout: float, interval: float = 0.1) -> Iterator[float]:
    """Yield the time left until `timeout` seconds have passed, pausing `interval` between
    turns: the polling loop of every wait below (each turn asks systemd or the journal)."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        yield left
        time.sleep(interval)


class Booted:
    """A container running systemd as PID 1, with the project installed into it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def exec(
        self,
        *command: str,
        check: bool = True,
        timeout: float = 60.0,
        stdin: str | None = None,
        user: str | None = None,
        privileged: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """`podman exec`; `privileged`: with every capability (CAP_SYS_PTRACE to read another
        user's /proc/PID/fd, root and ns, which the container's own root may not)."""
        options = ["--interactive"] if stdin is not None else []
        if privileged:
            options.append("--privileged")
        if user is not None:
            options += ["--user", user]
        return podman(
            "exec", *options, self.name, *command, check=check, timeout=timeout, stdin=stdin
        )

    def sh(self, script: str, check: bool = True, timeout: float = 60.0) -> str:
        return self.exec("sh", "-c", script, check=check, timeout=timeout).stdout

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.exec("systemctl", *args, check=check, timeout=90.0)

    def show(self, *properties: str, unit: str = UNIT) -> dict[str, str]:
        out = self.exec("systemctl", "show", unit, "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, name: str, unit: str = UNIT) -> str:
        return self.show(name, unit=unit)[name]

    def main_pid(self) -> int:
        pid = int(self.prop("MainPID"))
        assert pid > 0, f"{UNIT} has no main process: {self.show('ActiveState', 'SubState')}"
        return pid

    def wait_state(self, timeout: float = 30.0, unit: str = UNIT, **wanted: str) -> dict[str, str]:
        """Poll `systemctl show` until every property has the wanted value; return them."""
        seen: dict[str, str] = {}
        for _ in deadline_loop(timeout):
            seen = self.show(*wanted, unit=unit)
            if all(seen.get(key) == value for key, value in wanted.items()):
                return seen
        raise AssertionError(f"{unit}: wanted {wanted} within {timeout} s, last seen {seen}")

    def wait_prop(
        self, name: str, accept: Callable[[str], bool], timeout: float, unit: str = UNIT
    ) -> str:
        value = ""
        for _ in deadline_loop(timeout):
            value = self.prop(name, unit=unit)
            if accept(value):
                return value
        raise AssertionError(f"{unit} {name}: last {value!r} after {timeout} s")

    def cursor(self) -> str:
        """The journal's current end: wait_journal(after=) then sees only newer lines."""
        out = self.exec("journalctl", "-n", "0", "--show-cursor", "--quiet").stdout
        match = re.search(r"^-- cursor: (\S+)", out, re.M)
        if match is None:  # an empty journal prints no cursor
            return ""
        return match.group(1)

    def journal(self, after: str = "", unit: str = UNIT) -> list[dict[str, str]]:
        """The unit's journal entries (after a cursor), as journalctl's JSON objects: its own
        processes' lines and systemd's about it. Filtered here, not with `-u`: journalctl 252
        with a match and --after-cursor skips the first matching entry when the cursor's own
        entry does not match (it always steps over two)."""
        command = ["journalctl", "-o", "json", "--no-pager"]
        if after:
            command.append(f"--after-cursor={after}")
        entries = [json.loads(line) for line in self.exec(*command).stdout.splitlines() if line]
        return [
            entry for entry in entries if unit in (entry.get("_SYSTEMD_UNIT"), entry.get("UNIT"))
        ]

    def journalctl(self, *options: str) -> list[dict[str, str]]:
        """`journalctl OPTIONS -o json`: its entries, the whole journal's, filtered by it."""
        out = self.exec("journalctl", "-o", "json", "--no-pager", *options).stdout
        return [json.loads(line) for line in out.splitlines() if line]

    def wait_journal(
        self, pattern: str, after: str = "", timeout: float = 30.0, unit: str = UNIT
    ) -> dict[str, str]:
        """The first journal entry of the unit, after the cursor, whose MESSAGE matches."""
        regex = re.compile(pattern)
        messages: list[str] = []
        for _ in deadline_loop(timeout, interval=0.2):
            entries = self.journal(after, unit)
            for entry in entries:
                if regex.search(message(entry)):
                    return entry
            messages = [message(entry) for entry in entries]
        raise AssertionError(
            f"no journal line of {unit} matches {pattern!r} in {timeout} s:\n" + "\n".join(messages)
        )

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait for systemd to finish booting; its state ("running", "degraded"), or what
        went wrong. `is-system-running --wait` fails at once while systemd's bus is not up."""
        said = ""
        for left in deadline_loop(timeout, interval=0.2):
            done = self.exec(
                "timeout",
                str(int(left) + 1),
                "systemctl",
                "is-system-running",
                "--wait",
                check=False,
                timeout=left + 10,
            )
            lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
            said = lines[-1] if lines else f"exit {done.returncode}"
            if said in ("running", "degraded", "maintenance", "stopping"):
                return said
        return f"still {said!r} after {timeout:.0f} s"

    def held_connection(self, address: str) -> "HeldClient":
        """A TCP connection to HOST:PORT, held open from inside the container."""
        return HeldClient(self.name, address)


def stop(container: Booted) -> float:
    """`systemctl stop supervisor`; how long it took."""
    started = time.monotonic()
    container.systemctl("stop", "supervisor")
    return time.monotonic() - started


def assert_stopped_cleanly(container: Booted, cursor: str, pid: int) -> None:
    """The unit stopped on the supervisor's own exit 0, which logged "stopped" last."""
    state = container.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert state == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainStatus": "0",
        "ExecMainCode": "1",  # CLD_EXITED: it exited, not killed
    }
    entry = container.wait_journal(r"(^|: )stopped$", after=cursor, timeout=5)
    assert entry["_PID"] == str(pid)


def message(entry: dict[str, str]) -> str:
    """An entry's MESSAGE; journald stores one that is not valid UTF-8 as a list of bytes."""
    value: object = entry.get("MESSAGE", "")
    if isinstance(value, list):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


# Connects, says so, then holds the connection open without sending anything until its stdin
# closes (or a minute has passed, so that nothing outlives a broken test for long).
HOLD = """
import select, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
sock = socket.create_connection((host, int(port)))
print("connected", flush=True)
select.select([sys.stdin], [], [], 60)
sock.close()
"""


class HeldClient:
    """A client in the container holding a connection open, sending nothing, until closed."""

    def __init__(self, container: str, address: str) -> None:
        self.process = subprocess.Popen(
            ["podman", "exec", "--interactive", container, "python3", "-c", HOLD, address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until it connected, or exited
        if line.strip() != "connected":
            self.close()
            raise AssertionError(f"the held client did not connect: {line!r}")

    def close(self) -> None:
        """Close the connection (the client's stdin); wait for the client to exit."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def build_inputs() -> str:
    """The digest of what the image is made from: the build script (its package list)."""
    return hashlib.sha256(BUILD_SCRIPT.read_bytes()).hexdigest()[:16]


@pytest.fixture(scope="session")
def systemd_image() -> str:
    """The image with systemd 252, built when missing or when its build inputs changed."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (./dev test installs it when run as root)")
    inputs = build_inputs()
    label = podman(
        "image",
        "inspect",
        "--format",
        f'{{{{index .Labels "{INPUTS_LABEL}"}}}}',
        IMAGE,
        check=False,
    )
    if label.returncode == 0 and label.stdout.strip() == inputs:
        return IMAGE
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is missing: cannot build the systemd image")
    previous = podman("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False)
    started = time.monotonic()
    done = subprocess.run(
        [str(BUILD_SCRIPT), IMAGE, inputs],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"systemd-image failed:\n{done.stderr}"
    print(f"systemd suite: built {IMAGE} in {time.monotonic() - started:.0f} s")
    if previous.returncode == 0:  # the outdated image, untagged now: no pile of them
        podman("image", "rm", previous.stdout.strip(), check=False)
    return IMAGE


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from this source tree, and its dependencies' wheels."""
    directory = tmp_path_factory.mktemp("wheels")
    source = tmp_path_factory.mktemp("source")
    # A copy, so that the build's own build/ and egg-info leave the tree alone.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("supervisor", "services"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    for command in (
        [*pip, "wheel", "--no-deps", "--quiet", str(source), "-w", str(directory)],
        [
            *pip,
            "download",
            "--quiet",
            "--only-binary=:all:",
            "psutil",
            "python-daemon",
            "-d",
            str(directory),
        ],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stderr}"
    return directory


class Containers:
    """Boots containers with the project installed; removes every one at the end."""

    def __init__(self, image: str, wheels: Path) -> None:
        self.image = image
        self.wheels = wheels
        self.started: list[str] = []
        self.cannot_boot = ""
        self.staging = Path(tempfile.mkdtemp(prefix="systemd-suite-"))
        src = self.staging / "src"
        (src / "etc").mkdir(parents=True)
        shutil.copy2(SYSTEMD_TOML, src / "etc" / "systemd.toml")
        shutil.copytree(ROOT / "systemd", src / "systemd")

    def boot(self, enable: bool = True, before_enable: str = "") -> Booted:
        """A new container, systemd booted, the project installed; with `enable`, the unit
        enabled and started (after the shell commands `before_enable`)."""
        if self.cannot_boot:
            pytest.skip(self.cannot_boot)
        name = f"sv-systemd-{uuid.uuid4().hex[:10]}"
        self.started.append(name)
        podman(
            "run",
            "--detach",
            "--name",
            name,
            "--hostname",
            name,
            "--network",
            "none",
            "--systemd",
            "always",
            "--cap-add",
            "SYS_ADMIN",
            self.image,
            "/sbin/init",
        )
        container = Booted(name)
        state = container.wait_booted()
        if state not in ("running", "degraded"):
            self.cannot_boot = f"systemd does not boot in podman here ({state})"
            pytest.skip(self.cannot_boot)
        podman("cp", str(self.wheels), f"{name}:/root/wheels")
        podman("cp", str(self.staging / "src"), f"{name}:/root/src")
        container.sh(INSTALL, timeout=180)
        if before_enable:
            container.sh(before_enable)
        if enable:
            container.sh(ENABLE, timeout=90)
        return container

    def remove_all(self) -> None:
        for name in self.started:
            podman("rm", "--force", "--time", "0", name, check=False, timeout=120)
        shutil.rmtree(self.staging, ignore_errors=True)


@pytest.fixture(scope="session")
def containers(systemd_image: str, wheels: Path) -> Iterator[Containers]:
    made = Containers(systemd_image, wheels)
    try:
        yield made
    finally:
        made.remove_all()


@pytest.fixture(scope="module")
def shared(containers: Containers) -> Booted:
    """One container for a module's tests that leave the service as they found it."""
    return containers.boot()


@pytest.fixture
def fresh(containers: Containers) -> Booted:
    """A container of the test's own, the unit enabled and started."""
    return containers.boot()

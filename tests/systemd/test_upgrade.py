"""`supervisor upgrade` under systemd: the unit's main process changes (MAINPID=), and systemd
follows it without calling the service failed or restarting it. One container for both tests:
the unit as installed (the hand-over, the journal, reload and stop afterwards), then with a short
watchdog and socket activation (pings and sockets now the new process's)."""

import re
import time

import pytest

from tests.systemd.clients import (
    daytime_unixgram,
    echo_tcp,
    echo_udp,
    echo_unix,
    http_get,
    listening_inodes,
    socket_inodes,
)
from tests.systemd.conftest import (
    CONFIG,
    SHORT_WATCHDOG,
    SOCKETS,
    STOP_TIMEOUT,
    Booted,
    Containers,
    assert_stopped_cleanly,
    deadline_loop,
    message,
    stop,
)

# The first test of a run may build the image (debootstrap, about 70 s) and the wheels: more
# than the suite-wide 120 s on a slow mirror. Every wait inside has its own deadline.
pytestmark = [pytest.mark.systemd, pytest.mark.timeout(600)]

SUPERVISOR = "/opt/supervisor/bin/supervisor"
PIDFILE = "/run/supervisor/supervisor.pid"  # etc/systemd.toml's
UPGRADED = re.compile(r"^upgraded: pid (\d+) \(version [^)]*\) took over from pid (\d+) ")
# What systemd 252 logs when a process other than the main one notifies with NotifyAccess=main
# ("Got notification message from PID N, but reception only permitted for main PID M"), and
# what it says when it thinks the service ended or failed.
REFUSED = re.compile(r"Got notification message from PID|reception only permitted")
ENDED = re.compile(r"Main process exited|Failed with result|Scheduled restart|Deactivated|Stopped")


@pytest.fixture(scope="module")
def container(containers: Containers) -> Booted:
    """The unit installed, enabled and started. The first test leaves it stopped; the second
    (which needs nothing from the first) adds its drop-in and the socket unit."""
    return containers.boot()


def upgrade(container: Booted, user: str | None = None) -> tuple[int, int]:
    """`supervisor upgrade -c CONFIG` in the container, as `user` (or root), which must succeed;
    (new pid, old pid) as it says them."""
    done = container.exec(SUPERVISOR, "upgrade", "-c", CONFIG, user=user, check=False, timeout=150)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}{done.stderr}"
    said = UPGRADED.match(done.stdout)
    assert said, done.stdout
    return int(said.group(1)), int(said.group(2))


def wait_gone(container: Booted, pid: int, timeout: float = 15.0) -> None:
    """Until process `pid` is gone (its /proc entry: a zombie still has one)."""
    for _ in deadline_loop(timeout, interval=0.2):
        if container.exec("test", "-e", f"/proc/{pid}", check=False).returncode != 0:
            return
    raise AssertionError(f"pid {pid} still exists after {timeout} s")


def systemd_said(container: Booted, cursor: str) -> list[dict[str, str]]:
    """What systemd itself (PID 1) logged about the unit after the cursor."""
    return [entry for entry in container.journal(cursor) if entry.get("_PID") == "1"]


def assert_followed(container: Booted, cursor: str) -> None:
    """systemd accepted the new main process: it refused none of its notifications, warned of
    nothing about the unit (such as "Supervising process N which is not our child", for a main
    process it would not wait for on stop: see upgrade.py), and never thought the service
    ended."""
    said = systemd_said(container, cursor)
    lines = [f"<{entry.get('PRIORITY')}> {message(entry)}" for entry in said]
    assert not [entry for entry in said if REFUSED.search(message(entry))], lines
    assert not [entry for entry in said if ENDED.search(message(entry))], lines
    assert not [entry for entry in said if int(entry.get("PRIORITY", "6")) <= 4], lines


def test_upgrade_hands_the_unit_to_the_new_process(container: Booted) -> None:
    """The unit as installed: `supervisor upgrade` as root; MainPID follows, the services
    answer, the old process drains and exits, and reload and stop work on the new one."""
    container.wait_state(ActiveState="active", SubState="running")
    before = container.show("MainPID", "InvocationID")
    old = int(before["MainPID"])
    assert container.exec("cat", PIDFILE).stdout.strip() == str(old)
    cursor = container.cursor()

    new, said_old = upgrade(container)
    assert (said_old, new != old) == (old, True)
    state = container.show(
        "MainPID", "ActiveState", "SubState", "NRestarts", "Result", "InvocationID"
    )
    assert state == {
        "MainPID": str(new),
        "ActiveState": "active",
        "SubState": "running",
        "NRestarts": "0",
        "Result": "success",
        "InvocationID": before["InvocationID"],  # the same run of the unit: not restarted
    }
    assert container.exec("cat", PIDFILE).stdout.strip() == str(new)
    assert echo_tcp(container, text="over tcp") == "over tcp\n"
    assert echo_udp(container, text="over udp") == "over udp\n"
    assert echo_unix(container, text="over unix") == "over unix\n"
    assert daytime_unixgram(container).rstrip().endswith("-UTC")
    for port, name in ((7080, "hello"), (7081, "hello-prefork")):
        code, body = http_get(container, port, "/")
        assert (code, body.startswith(f"Hello from {name} ")) == (200, True), body
    code, body = http_get(container, 9464, "/metrics")
    assert code == 200
    # Counted by the new process, which carried the old one's counters over.
    assert re.search(r'^supervisor_upgrades_total\{result="ok"\} 1(\.0)?$', body, re.M), body
    wait_gone(container, old)  # idle: it drains at once
    assert container.wait_journal(r"(^|: )stopped$", after=cursor, timeout=5)["_PID"] == str(old)
    assert_followed(container, cursor)

    # ExecReload= finds the new process through the pidfile; systemd takes its RELOADING=1
    # and READY=1.
    cursor = container.cursor()
    done = container.systemctl("reload", "supervisor", check=False)
    assert done.returncode == 0, done.stderr
    entry = container.wait_journal(r"^reloaded: ", after=cursor, timeout=5)
    assert entry["_PID"] == str(new)
    assert container.show("MainPID", "ActiveState") == {
        "MainPID": str(new),
        "ActiveState": "active",
    }
    assert_followed(container, cursor)

    # systemd stops the new process and waits for it: it exits 0, not SIGKILLed with the unit.
    assert stop(container) < STOP_TIMEOUT
    assert_stopped_cleanly(container, cursor, new)


def test_upgrade_with_socket_activation_and_a_short_watchdog(container: Booted) -> None:
    """The sockets systemd passed in are the new process's (the same inodes), and its watchdog
    pings keep the unit from being restarted; a new process that hangs is restarted."""
    container.systemctl("stop", "supervisor.service")
    container.sh(SHORT_WATCHDOG)
    container.systemctl("daemon-reload")
    container.systemctl("enable", "--now", "supervisor.socket")
    held_by_systemd = listening_inodes(container)
    wanted = {held_by_systemd[name] for name in SOCKETS}
    assert echo_tcp(container, text="wakes it") == "wakes it\n"
    container.wait_state(ActiveState="active", SubState="running")
    before = container.show("MainPID", "InvocationID", "WatchdogUSec")
    assert before["WatchdogUSec"] == "3s"
    old = int(before["MainPID"])
    assert wanted <= socket_inodes(container, old)
    cursor = container.cursor()

    new, _ = upgrade(container, user="supervisor")  # (as the service's own user, this time)
    assert new != old
    after = listening_inodes(container)
    assert {name: after.get(name) for name in SOCKETS} == {
        name: held_by_systemd[name] for name in SOCKETS
    }
    assert wanted <= socket_inodes(container, new)
    wait_gone(container, old)
    # From now on only the new process can ping: more than WatchdogSec without a restart.
    pinged = container.prop("WatchdogTimestampMonotonic")
    time.sleep(4.5)
    state = container.show("MainPID", "NRestarts", "ActiveState", "InvocationID")
    assert state == {
        "MainPID": str(new),
        "NRestarts": "0",
        "ActiveState": "active",
        "InvocationID": before["InvocationID"],
    }
    assert int(container.prop("WatchdogTimestampMonotonic")) > int(pinged)
    assert echo_udp(container, text="still here") == "still here\n"
    assert_followed(container, cursor)

    # And the watchdog is the new process's: stuck, it is restarted, as the first one would be.
    container.exec("kill", "-STOP", str(new))
    container.wait_journal(r"Watchdog timeout", after=cursor, timeout=15)
    container.wait_prop("NRestarts", lambda value: value == "1", timeout=30)
    container.wait_state(ActiveState="active", SubState="running")
    assert container.main_pid() not in (old, new)
    assert echo_tcp(container, text="after the restart") == "after the restart\n"

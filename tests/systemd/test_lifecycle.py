"""The service's life under systemd, each test in a container of its own: the watchdog, stop
(idle and draining), socket activation, a container restart, a configuration error at start."""

import re
import subprocess
import time

import pytest

from tests.podman import ENV, podman
from tests.systemd.clients import (
    echo_tcp,
    echo_udp,
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
    message,
    stop,
)

# The first test of a run may build the image (debootstrap, about 70 s) and the wheels: more
# than the suite-wide 120 s on a slow mirror. Every wait inside has its own deadline.
pytestmark = [pytest.mark.systemd, pytest.mark.timeout(600)]


def test_watchdog_restarts_a_stuck_service(containers: Containers) -> None:
    container = containers.boot(before_enable=SHORT_WATCHDOG)
    assert container.prop("WatchdogUSec") == "3s"
    pid = container.main_pid()
    assert container.prop("NRestarts") == "0"
    cursor = container.cursor()
    container.exec("kill", "-STOP", str(pid))
    container.wait_journal(r"Watchdog timeout", after=cursor, timeout=15)
    container.wait_prop("NRestarts", lambda value: value == "1", timeout=30)
    container.wait_state(ActiveState="active", SubState="running")
    assert container.main_pid() != pid
    assert echo_tcp(container, text="after the restart") == "after the restart\n"


def test_stop_idle_and_with_a_request_in_flight(fresh: Booted) -> None:
    cursor, pid = fresh.cursor(), fresh.main_pid()
    assert stop(fresh) < STOP_TIMEOUT
    assert_stopped_cleanly(fresh, cursor, pid)

    fresh.systemctl("start", "supervisor")
    cursor, pid = fresh.cursor(), fresh.main_pid()
    held = fresh.held_connection("127.0.0.1:7007")
    stopping = subprocess.Popen(
        ["podman", "exec", fresh.name, "systemctl", "stop", "supervisor"],
        env=ENV,
    )
    started = time.monotonic()
    try:
        # Draining: the supervisor waits for the request, and the unit for the supervisor.
        fresh.wait_journal(r"stopping; 1 requests? in progress", after=cursor, timeout=10)
        assert fresh.prop("ActiveState") == "deactivating"
        closed = time.monotonic()
    finally:
        held.close()
    assert stopping.wait(STOP_TIMEOUT + 10) == 0
    assert time.monotonic() - started < STOP_TIMEOUT
    # It ended because the request did, not at shutdown_timeout (20 s in etc/systemd.toml).
    assert time.monotonic() - closed < 10
    assert_stopped_cleanly(fresh, cursor, pid)


def test_socket_activation(fresh: Booted) -> None:
    fresh.systemctl("stop", "supervisor.service")
    fresh.systemctl("enable", "--now", "supervisor.socket")
    assert fresh.prop("ActiveState") == "inactive"
    held_by_systemd = listening_inodes(fresh)
    assert set(SOCKETS) <= set(held_by_systemd), held_by_systemd

    cursor = fresh.cursor()
    assert echo_tcp(fresh, text="wakes it") == "wakes it\n"
    fresh.wait_state(ActiveState="active", SubState="running")
    for name in ("echo", "echo-udp", "hello"):
        fresh.wait_journal(rf"^{name}: .*inherited from systemd", after=cursor, timeout=5)
    pid = fresh.main_pid()
    wanted = {held_by_systemd[name] for name in SOCKETS}
    assert wanted <= socket_inodes(fresh, pid)

    assert fresh.systemctl("reload", "supervisor", check=False).returncode == 0
    after = listening_inodes(fresh)
    assert {name: after.get(name) for name in SOCKETS} == {
        name: held_by_systemd[name] for name in SOCKETS
    }
    assert wanted <= socket_inodes(fresh, pid)

    fresh.systemctl("stop", "supervisor.service")
    assert fresh.prop("ActiveState") == "inactive"
    assert fresh.prop("ActiveState", unit="supervisor.socket") == "active"
    assert echo_udp(fresh, text="a datagram wakes it") == "a datagram wakes it\n"
    assert fresh.prop("ActiveState") == "active"


def test_enabled_units_come_back_after_a_container_restart(fresh: Booted) -> None:
    fresh.systemctl("enable", "supervisor.socket")
    fresh.exec("touch", "/run/before-restart")  # /run is a tmpfs: a new boot starts it empty
    podman("restart", "--time", "20", fresh.name, timeout=60)
    state = fresh.wait_booted()
    assert state in ("running", "degraded"), state
    assert fresh.exec("test", "-e", "/run/before-restart", check=False).returncode == 1
    fresh.wait_state(ActiveState="active", SubState="running")
    assert fresh.prop("ActiveState", unit="supervisor.socket") == "active"
    assert echo_tcp(fresh, text="after the restart") == "after the restart\n"
    code, body = http_get(fresh, 7080, "/")
    assert code == 200, body


def test_configuration_error_at_start_fails_once(containers: Containers) -> None:
    container = containers.boot(enable=False)
    container.exec("sh", "-c", f"cat >> {CONFIG}", stdin="\n[servers.broken\n")
    container.systemctl("daemon-reload")
    container.systemctl("enable", "supervisor.service")
    cursor = container.cursor()
    assert container.systemctl("start", "supervisor", check=False).returncode != 0
    # Failed for good, not restarting: a configuration error does not mend itself.
    container.wait_state(ActiveState="failed", timeout=30)
    state = container.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert state == {
        "ActiveState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }
    entry = container.wait_journal(re.escape(CONFIG), after=cursor, timeout=5)
    assert len(message(entry).splitlines()) == 1


def test_the_notify_reload_drop_in_on_systemd_252(fresh: Booted) -> None:
    """What README "systemd" says of systemd/notify-reload.conf on 252: its Type= line is
    ignored (still notify) and its empty ExecReload= applies, so the unit cannot reload."""
    assert "reload -c" in fresh.show("ExecReload")["ExecReload"]  # the unit's own, until:
    fresh.sh(
        "mkdir -p /etc/systemd/system/supervisor.service.d && cp /root/src/systemd/"
        "notify-reload.conf /etc/systemd/system/supervisor.service.d/"
    )
    cursor = fresh.cursor()
    fresh.systemctl("daemon-reload")
    assert fresh.show("Type", "ExecReload") == {"Type": "notify"}  # (no ExecReload= left)
    assert fresh.journalctl("--after-cursor", cursor, "-g", "notify-reload")  # systemd says so
    pid = fresh.main_pid()
    reload = fresh.systemctl("reload", "supervisor", check=False)
    assert reload.returncode != 0
    assert "not applicable" in reload.stderr, reload.stderr
    assert fresh.main_pid() == pid  # still running the configuration it had

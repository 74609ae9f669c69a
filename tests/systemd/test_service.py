"""The installed service in one shared container: readiness and STATUS=, the bundled services,
reload (accepted and refused), journal priorities, the unix socket's permissions, hardening.

Each test leaves the service running on the installed configuration, as it found it.
"""

import re
from collections.abc import Iterator

import pytest

from tests.systemd.clients import daytime_unixgram, echo_tcp, echo_udp, echo_unix, http_get
from tests.systemd.conftest import CONFIG, Booted, message

# The first test of a run may build the image (debootstrap, about 70 s) and the wheels: more
# than the suite-wide 120 s on a slow mirror. Every wait inside has its own deadline.
pytestmark = [pytest.mark.systemd, pytest.mark.timeout(600)]

STATUS = re.compile(r"^(\d+) servers, (\d+) requests? in progress")
RELOAD_FAILED = "reload failed, still running the previous configuration:"
# Appended to the installed file: a TOML syntax error (the file is not TOML at all), and a file
# that parses but that the supervisor refuses.
SYNTAX_ERROR = "\n[servers.broken\n"
INVALID_VALUE = """
[servers.broken]
address = "tcp://127.0.0.1:7101"
handler = "supervisor_services.echo:EchoHandler"
max_children = 0
"""
ADDED_SERVER = """
[servers.added]
address = "tcp://127.0.0.1:7100"
handler = "supervisor_services.echo:EchoHandler"
mode = "inline"
"""


@pytest.fixture
def service(shared: Booted) -> Iterator[Booted]:
    """The shared container, its configuration put back and reloaded after the test."""
    original = shared.exec("cat", CONFIG).stdout
    shared.wait_state(ActiveState="active", SubState="running")
    yield shared
    if shared.exec("cat", CONFIG).stdout != original:
        shared.exec("tee", CONFIG, stdin=original)
        shared.systemctl("reload", "supervisor")


def in_progress(status: str) -> int:
    match = STATUS.match(status)
    assert match, f"StatusText {status!r} is not 'N servers, N requests in progress...'"
    return int(match.group(2))


def test_active_after_ready_with_status_that_follows_requests(service: Booted) -> None:
    # `systemctl restart` returns once the unit is active: with READY=1, every server is bound
    # by then, so clients in the same shell need no retry. (Seen here: as Type=simple, the
    # same commands find nothing listening.)
    answers = service.sh(
        "systemctl restart supervisor && echo right away | nc -N 127.0.0.1 7007"
        " && curl --silent --fail http://127.0.0.1:7081/",
        check=False,
    )
    assert answers.startswith("right away\nHello from hello-prefork "), answers
    state = service.show("ActiveState", "SubState", "StatusText", "Type")
    assert state["Type"] == "notify"
    assert state["ActiveState"] == "active"
    assert in_progress(state["StatusText"]) == 0
    # The status follows requests as they come and go, not only at each watchdog ping
    # (WatchdogSec=30): within 3 s.
    held = service.held_connection("127.0.0.1:7007")
    try:
        busy = service.wait_prop("StatusText", lambda text: in_progress(text) == 1, timeout=3)
    finally:
        held.close()
    service.wait_prop("StatusText", lambda text: in_progress(text) == 0, timeout=3)
    assert STATUS.match(busy)


def test_bundled_services_answer(service: Booted) -> None:
    assert echo_tcp(service, text="over tcp") == "over tcp\n"
    assert echo_udp(service, text="over udp") == "over udp\n"
    assert echo_unix(service, text="over unix") == "over unix\n"
    assert re.fullmatch(
        r"\w+day, \w+ \d\d, \d{4} \d\d:\d\d:\d\d-UTC\r?\n", daytime_unixgram(service)
    )
    for port, name in ((7080, "hello"), (7081, "hello-prefork")):
        code, body = http_get(service, port, "/path")
        assert (code, body.startswith(f"Hello from {name} ")) == (200, True), body
    code, body = http_get(service, 9464, "/healthz")
    assert (code, body.strip()) == (200, "ok")
    code, body = http_get(service, 9464, "/metrics")
    assert code == 200
    assert re.search(r'^supervisor_requests_total\{server="echo"\} [1-9]', body, re.M), body


def test_reload_adds_a_server(service: Booted) -> None:
    assert echo_tcp(service, port=7100) == ""  # nothing there yet
    service.exec("sh", "-c", f"cat >> {CONFIG}", stdin=ADDED_SERVER)
    done = service.systemctl("reload", "supervisor", check=False)
    assert done.returncode == 0, done.stderr
    assert echo_tcp(service, port=7100, text="added") == "added\n"
    assert service.prop("ActiveState") == "active"


@pytest.mark.parametrize("broken", [SYNTAX_ERROR, INVALID_VALUE], ids=["syntax", "value"])
def test_rejected_reload_fails_and_keeps_serving(service: Booted, broken: str) -> None:
    cursor = service.cursor()
    pid = service.main_pid()
    service.exec("sh", "-c", f"cat >> {CONFIG}", stdin=broken)
    done = service.systemctl("reload", "supervisor", check=False)
    assert done.returncode != 0
    # (systemctl reload has waited for ExecReload=: the line is there, or never will be)
    entry = service.wait_journal(re.escape(RELOAD_FAILED), after=cursor, timeout=5)
    assert CONFIG in message(entry), message(entry)  # the reason names the file
    status = service.systemctl("status", "--no-pager", "--lines=20", "supervisor", check=False)
    lines = [line for line in status.stdout.splitlines() if RELOAD_FAILED in line]
    assert lines, status.stdout
    assert CONFIG in lines[0]
    assert (service.prop("ActiveState"), service.main_pid()) == ("active", pid)
    assert echo_tcp(service, text="still here") == "still here\n"
    assert echo_udp(service, text="still here") == "still here\n"


def test_journal_priorities_and_bare_messages(service: Booted) -> None:
    cursor = service.cursor()
    service.exec("sh", "-c", f"cat >> {CONFIG}", stdin=INVALID_VALUE)
    assert service.systemctl("reload", "supervisor", check=False).returncode != 0
    rejected = service.wait_journal(re.escape(RELOAD_FAILED), after=cursor, timeout=5)
    # The rejected reload's line is an ERROR: priority 3, in `journalctl -p warning`.
    assert rejected["PRIORITY"] == "3"
    warnings = service.journalctl("-u", "supervisor", "-p", "warning")
    assert rejected["__CURSOR"] in [entry["__CURSOR"] for entry in warnings]
    # The supervisor's own lines (from its pid, not systemd's about the unit): INFO at 6, and
    # the message alone: the journal has the time, the unit and the pid already.
    pid = str(service.main_pid())
    own = [entry for entry in service.journal() if entry.get("_PID") == pid]
    assert len(own) > 5
    ready = [entry for entry in own if message(entry).startswith("ready: ")]
    assert ready, [message(entry) for entry in own]
    assert ready[0]["PRIORITY"] == "6"
    for entry in own:
        text = message(entry)
        assert not re.match(r"\d{4}-\d\d-\d\d", text), text
        assert not re.search(r"supervisor\[\d+\]:", text), text


def test_unix_sockets_reachable_by_another_user(service: Booted) -> None:
    assert echo_unix(service, text="from nobody", user="nobody") == "from nobody\n"
    assert daytime_unixgram(service, user="nobody").rstrip().endswith("-UTC")


def test_hardening_applies_to_the_running_service(service: Booted) -> None:
    pid = service.main_pid()
    status = dict(
        line.split(":", 1)
        for line in service.exec("cat", f"/proc/{pid}/status").stdout.splitlines()
    )
    uid = service.exec("id", "-u", "supervisor").stdout.strip()
    assert status["Uid"].split() == [uid] * 4
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    # Its mount namespace: / read-only (ProtectSystem=strict), though a writable path exists
    # there (so the refusal is the mount's, not nsenter's), and a /tmp of its own.
    enter = ["nsenter", "-t", str(pid), "-m", "--"]
    refused = service.exec(*enter, "touch", "/usr/x", check=False, privileged=True)
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr
    allowed = service.exec(*enter, "touch", "/run/supervisor/x", check=False, privileged=True)
    assert allowed.returncode == 0, allowed.stderr
    service.exec("rm", "-f", "/run/supervisor/x")
    service.exec("touch", "/tmp/outside")
    assert service.exec("test", "-e", "/tmp/outside", check=False).returncode == 0
    inside = service.exec("ls", "-A", f"/proc/{pid}/root/tmp", privileged=True).stdout.split()
    assert "outside" not in inside

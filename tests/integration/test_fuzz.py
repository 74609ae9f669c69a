"""`supervisor run` and reload fuzzed with Hypothesis (fixed seed, bounded counts): a file
either starts the supervisor (which then stops cleanly) or is refused with exactly one bounded
line and a sysexits status; a reload with it either applies or is refused in one line while
the old configuration keeps serving. Never a traceback, never a crash."""

import os
from collections.abc import Iterator

import pytest
import tomli_w
from hypothesis import event, given
from hypothesis import strategies as st

from supervisor import control, errors
from tests.conftest import Supervisor, exchange
from tests.hostile.corpus import PROBE
from tests.hostile.strategies import SUPERVISOR_LIMITS, fuzz, mutated

BASE: dict[str, dict[str, object]] = {
    "supervisor": {"allow_root": True, "shutdown_timeout": 2},
    "servers": {
        "fuzz": {"address": "tcp://127.0.0.1:0", "handler": "tests.handlers:LineEchoHandler"},
    },
    "metrics": {"address": "tcp://127.0.0.1:0"},
}
FAILURES = {os.EX_CONFIG, os.EX_OSERR, os.EX_NOPERM}
# [supervisor] keys the run examples set: not log_level (at warning, no `ready:` line to wait
# for). The reload examples leave out the guards' defaults too: an accepted file that sets
# them rightly applies them to the probe server as well, which would then turn the test away.
RUN_KEYS = [key for key in SUPERVISOR_LIMITS if key != "log_level"]
GUARDS = {"allow", "deny", "rate", "rate_burst", "source_rate", "source_rate_burst"}
RELOAD_KEYS = [key for key in RUN_KEYS if key not in {*GUARDS, "max_per_source", "banner_fail"}]


@fuzz(60)  # (a process each: 0.1 to 0.5 s)
@given(text=st.one_of(mutated(BASE, RUN_KEYS), mutated(BASE, RUN_KEYS, wild=False)))
def test_run_starts_or_refuses_any_file_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "supervisor.toml"
    path.write_text(text)
    supervisor = Supervisor(path)
    try:
        try:
            supervisor.wait_for_log("ready: ", timeout=20)
        except AssertionError:  # it exited without getting ready: refused
            status = supervisor.wait()
            event(f"refused ({status})")
            assert status in FAILURES, supervisor.log
            assert len(supervisor.lines) == 1, supervisor.log
            assert len(supervisor.lines[0]) <= errors.MAX_LINE
            return
        event("served")
        supervisor.signal(15)
        assert supervisor.wait() == 0, supervisor.log
    finally:
        supervisor.stop()
    assert "Traceback" not in supervisor.log
    assert "internal error" not in supervisor.log


RELOAD_BASE: dict[str, dict[str, object]] = {
    **BASE,
    "supervisor": {**BASE["supervisor"], "pidfile": "run/supervisor.pid"},
}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    """One supervisor for every reload example, with a probe server no example changes."""
    path = tmp_path_factory.mktemp("reload") / "supervisor.toml"
    path.write_text(tomli_w.dumps(RELOAD_BASE) + PROBE)
    supervisor = Supervisor(path).wait_ready()
    yield supervisor
    supervisor.stop()
    assert "Traceback" not in supervisor.log
    assert "internal error" not in supervisor.log


@fuzz(60)
@given(
    text=st.one_of(mutated(RELOAD_BASE, RELOAD_KEYS), mutated(RELOAD_BASE, RELOAD_KEYS, wild=False))
)
def test_a_reload_with_any_file_applies_or_keeps_the_old_one(
    running: Supervisor, text: str
) -> None:
    supervisor = running
    supervisor.config.write_text(text + PROBE)
    control_socket = supervisor.config.parent / "run" / "supervisor.sock"
    answer = control.request(str(control_socket), "reload")
    event("applied" if answer["ok"] else f"refused ({answer['exit_status']})")
    if not answer["ok"]:
        message = answer["message"]
        assert "\n" not in message
        assert len(message) <= errors.MAX_LINE
        assert answer["exit_status"] in FAILURES
    probe = supervisor.inet("probe")
    assert exchange(probe, b"alive\n", timeout=10) == b"%s alive\n" % repr(probe).encode()
    assert supervisor.running()

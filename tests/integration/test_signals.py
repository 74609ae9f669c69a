"""The operator's signals: QUIT stops fast, HUP reloads, USR1 reopens the log file.

SIGTERM and SIGINT (graceful stop) are covered by test_shutdown.py.
"""

import logging
import re
import signal
from pathlib import Path

import psutil
import pytest

from supervisor.core import State, Supervisor
from supervisor.reload import prepare
from supervisor.signals import Intent
from tests.configs import ECHO, TomlValue, server_table, supervisor_table
from tests.conftest import StartSupervisor, connect, exchange, readline

EXTRA = server_table("extra", "BaseEchoHandler")


def held_config(handler: str, **settings: TomlValue) -> str:
    return supervisor_table(shutdown_timeout=600, **settings) + server_table("held", handler)


def test_sigquit_terminates_running_requests_at_once(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(held_config("PidHandler"))
    with connect(supervisor.inet("held")) as held:
        child = psutil.Process(int(readline(held)))
        supervisor.signal(signal.SIGQUIT)
        assert held.recv(16) == b""  # terminated, though shutdown_timeout is 600 s
        assert supervisor.wait(timeout=10) == 0
    assert not child.is_running()
    log = supervisor.log
    assert "SIGQUIT: stopping; 1 requests in progress, waiting up to 0s for them" in log
    assert "sent SIGTERM to 1 children still running" in log
    assert f"held: child {child.pid} killed by signal SIGTERM" in log
    assert log.endswith("stopped")


def test_sigquit_kills_a_child_that_ignores_sigterm_after_the_grace(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(held_config("StubbornHandler", kill_grace=0.2))
    with connect(supervisor.inet("held")) as held:
        child = psutil.Process(int(readline(held)))  # SIGTERM is ignored from here on
        supervisor.signal(signal.SIGQUIT)
        supervisor.wait_for_log(r"sent SIGKILL to 1 children that outlived SIGTERM")
        assert held.recv(16) == b""
        assert supervisor.wait(timeout=10) == 0
    assert not child.is_running()
    assert f"held: child {child.pid} killed by signal SIGKILL" in supervisor.log


def test_sigquit_during_a_graceful_stop_cuts_it_short(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(held_config("PidHandler"))
    with connect(supervisor.inet("held")) as held:
        child = psutil.Process(int(readline(held)))
        supervisor.signal(signal.SIGTERM)
        supervisor.wait_for_log(r"SIGTERM: stopping; 1 requests in progress, waiting up to 600s")
        supervisor.signal(signal.SIGQUIT)
        supervisor.wait_for_log(r"SIGQUIT again: terminating the remaining requests now")
        assert held.recv(16) == b""
        assert supervisor.wait(timeout=10) == 0
    assert f"held: child {child.pid} killed by signal SIGTERM" in supervisor.log


def test_sighup_reloads_the_file(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(ECHO)
    supervisor.config.write_text(ECHO + EXTRA)
    start = len(supervisor.lines)

    supervisor.signal(signal.SIGHUP)

    supervisor.wait_for_log(r"reloaded: added extra$", start=start)
    extra = supervisor.wait_for_log(r"extra: listening on tcp://127\.0\.0\.1:(\d+) ", start=start)
    assert exchange(("127.0.0.1", int(extra.group(1))), b"new") == b"base new"
    assert exchange(supervisor.inet("echo"), b"old") == b"base old"


def test_sighup_with_a_broken_file_keeps_serving(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(ECHO)
    config: Path = supervisor.config
    config.write_text(ECHO + "max_children = 0\n" + EXTRA)
    start = len(supervisor.lines)

    supervisor.signal(signal.SIGHUP)

    supervisor.wait_for_log(
        r"ERROR supervisor\[\d+\]: reload failed, still running the previous configuration: "
        + re.escape(
            f"{config}: servers.echo.max_children: must be an integer from 1 to 4194304, got 0"
        )
        + "$",
        start=start,
    )
    assert exchange(supervisor.inet("echo"), b"ping") == b"base ping"
    assert "extra" not in "\n".join(supervisor.lines[start:])
    # The next good file goes through as usual.
    config.write_text(ECHO + EXTRA)
    supervisor.signal(signal.SIGHUP)
    supervisor.wait_for_log(r"reloaded: added extra$", start=start)


def test_sigusr1_without_a_log_file_changes_nothing(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(ECHO)
    supervisor.signal(signal.SIGUSR1)
    supervisor.wait_for_log(
        rf"INFO supervisor\[{supervisor.pid}\]: SIGUSR1: no log_file configured, nothing to reopen$"
    )
    assert exchange(supervisor.inet("echo"), b"ping") == b"base ping"
    assert supervisor.process.poll() is None


def test_signals_after_the_stop_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process: two SIGTERMs handled in one turn of the loop stop it once."""
    config = tmp_path / "sv.toml"
    config.write_text(ECHO)
    supervisor = Supervisor(prepare(str(config)))
    supervisor.state = State.RUNNING
    try:
        with caplog.at_level(logging.INFO, logger="supervisor"):
            supervisor._on_intent(Intent.STOP, signal.SIGTERM)
            supervisor._on_intent(Intent.STOP, signal.SIGTERM)
            supervisor._on_intent(Intent.RELOAD, signal.SIGHUP)
    finally:
        supervisor.loop.close()
    assert supervisor.state is State.STOPPED
    assert caplog.text.count("SIGTERM: stopping") == 1
    assert "reload" not in caplog.text

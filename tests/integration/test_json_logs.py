"""`log_format = "json"`: every line the supervisor, its fork server, its children, its prefork
workers and its threads write is one JSON object, with the server and the client of the request
a line is about, a handler's own lines and tracebacks included. Real supervisors; synchronised
on the answers (a handler logs before it answers) and on log lines."""

import json
import re
import signal
from typing import Any

import pytest

from tests.configs import METRICS_ANY_PORT, server_table, supervisor_table
from tests.conftest import (
    FORK_SERVER_READY,
    StartSupervisor,
    Supervisor,
    connect,
    exchange,
    readline,
)
from tests.integration.test_journal import AS_JOURNAL
from tests.integration.test_reload import write

LOGGING = "tests.logging_handler:LoggingHandler"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TEXT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO supervisor\[\d+\]: ")
SERVERS = (
    server_table("fork-log", LOGGING)
    + server_table("thread-log", LOGGING, mode="thread")
    + server_table("inline-log", LOGGING, mode="inline")
    + server_table("prefork-log", LOGGING, mode="prefork", workers=1)
    + server_table("failing", "FailingHandler")
    + server_table("failing-thread", "FailingHandler", mode="thread")
)


def records(supervisor: Supervisor, start: int = 0) -> list[dict[str, Any]]:
    """Every line of the log (from line `start`) as its object: each must be one, with the
    fields every line has."""
    found = []
    for line in supervisor.lines[start:]:
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert TIME.fullmatch(record["time"]), record
        assert record["level"] in ("debug", "info", "warning", "error", "critical"), record
        assert isinstance(record["message"], str), record
        assert isinstance(record["pid"], int), record
        found.append(record)
    return found


def reload_to(supervisor: Supervisor, toml: str) -> str:
    """Write the file, send SIGHUP, and return the whole line that says it was reloaded."""
    start = len(supervisor.lines)
    write(supervisor.config, toml + METRICS_ANY_PORT)
    supervisor.signal(signal.SIGHUP)
    return supervisor.wait_for_log(r"reloaded: ", start=start).string


def logged_by(supervisor: Supervisor, name: str, start: int) -> tuple[dict[str, Any], str]:
    """Have `name`'s LoggingHandler log a line, with a word not in ASCII; its record, and the
    client's address as the record should say it."""
    with connect(supervisor.inet(name)) as sock:
        host, port = sock.getsockname()[:2]
        sock.sendall(f"from {name} w\u00f6rld\n".encode())
        assert readline(sock) == b"logged\n"
    message = f"handled from {name} w\u00f6rld"
    supervisor.wait_for_log(re.escape(json.dumps(message)), start=start)
    (record,) = [record for record in records(supervisor, start) if record["message"] == message]
    return record, f"{host}:{port}"


def check_request_lines(supervisor: Supervisor, names: list[str], start: int = 0) -> None:
    """A handler's own line in each mode carries the server, the client and its process."""
    for name in names:
        record, client = logged_by(supervisor, name, start)
        assert record["level"] == "info", record
        assert record["logger"] == "tests.logging_handler", record
        assert record["server"] == name, record
        assert record["client"] == client, record
        in_supervisor = name.startswith(("thread", "inline"))
        assert (record["pid"] == supervisor.pid) == in_supervisor, (record, supervisor.pid)


def check_failure(supervisor: Supervisor, name: str) -> dict[str, Any]:
    """A handler's exception: one error line, its traceback a field of it."""
    assert exchange(supervisor.inet(name), b"boom\n") == b""
    pattern = rf"{name}: handler tests\.handlers:FailingHandler failed for client"
    supervisor.wait_for_log(pattern)
    (record,) = [r for r in records(supervisor) if re.match(pattern, r["message"])]
    assert record["level"] == "error", record
    assert record["server"] == name, record
    assert record["client"].startswith("127.0.0.1:"), record
    assert record["exc_info"].startswith("Traceback (most recent call last):"), record
    assert "RuntimeError: handler failure on purpose: b'boom\\n'" in record["exc_info"], record
    return record


def test_every_line_is_json_with_server_and_client(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(supervisor_table(log_format="json") + SERVERS)
    check_request_lines(supervisor, ["fork-log", "thread-log", "inline-log", "prefork-log"])
    # The fork server's child (its module imports no logging: set up when it logs) and a thread.
    forked = check_failure(supervisor, "failing")
    assert forked["pid"] != supervisor.pid
    assert check_failure(supervisor, "failing-thread")["pid"] == supervisor.pid
    # The supervisor's own lines about a server say it too (the metrics endpoint is none).
    listening = [
        r for r in records(supervisor) if ": listening on tcp://127.0.0.1:" in r["message"]
    ]
    metrics = listening.pop(next(i for i, r in enumerate(listening) if "/metrics" in r["message"]))
    assert "server" not in metrics, metrics
    assert {r["server"] for r in listening} == {
        "fork-log",
        "thread-log",
        "inline-log",
        "prefork-log",
        "failing",
        "failing-thread",
    }
    assert all("client" not in r for r in listening)
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    final = records(supervisor)
    assert final[-1]["message"] == "stopped"
    assert "server" not in final[-1]


def test_children_forked_by_the_supervisor(start_supervisor: StartSupervisor) -> None:
    toml = supervisor_table(log_format="json", fork_server=False) + SERVERS
    supervisor = start_supervisor(toml, fork_server=False)
    check_request_lines(supervisor, ["fork-log"])
    assert check_failure(supervisor, "failing")["pid"] != supervisor.pid
    records(supervisor)


def test_a_reload_switches_text_to_json_and_back(start_supervisor: StartSupervisor) -> None:
    servers = server_table("fork-log", LOGGING) + server_table("thread-log", LOGGING, mode="thread")
    supervisor = start_supervisor(servers)
    assert TEXT.match(supervisor.lines[0]), supervisor.lines[0]
    reloaded = reload_to(supervisor, supervisor_table(log_format="json") + servers)
    assert json.loads(reloaded)["level"] == "info", reloaded
    start = supervisor.lines.index(reloaded)
    supervisor.wait_for_log(FORK_SERVER_READY, start=start)  # (the new one: its children too)
    check_request_lines(supervisor, ["thread-log", "fork-log"], start)
    back = reload_to(supervisor, servers)
    assert TEXT.match(back), back


def test_a_rejected_client_is_a_field(start_supervisor: StartSupervisor) -> None:
    toml = supervisor_table(log_format="json") + server_table(
        "guarded", LOGGING, mode="thread", deny=["127.0.0.1"]
    )
    supervisor = start_supervisor(toml)
    with connect(supervisor.inet("guarded")) as sock:
        host, port = sock.getsockname()[:2]
        assert sock.recv(1) == b""  # (closed unanswered)
    supervisor.wait_for_log(r"guarded: rejected client")
    (record,) = [r for r in records(supervisor) if "rejected client" in r["message"]]
    assert (record["level"], record["server"]) == ("warning", "guarded"), record
    assert record["client"] == f"{host}:{port}", record


@pytest.mark.parametrize("name", ["failing", "failing-thread"])
def test_the_journal_gets_json_after_its_priority(
    start_supervisor: StartSupervisor, name: str
) -> None:
    supervisor = start_supervisor(supervisor_table(log_format="json") + SERVERS, wrapper=AS_JOURNAL)
    record = check_failure_in_journal(supervisor, name)
    assert record["pid"] != supervisor.pid or name == "failing-thread"


def check_failure_in_journal(supervisor: Supervisor, name: str) -> dict[str, Any]:
    assert exchange(supervisor.inet(name), b"boom\n") == b""
    line = supervisor.wait_for_log(rf"^<3>\{{.*{name}: handler .* failed for client").string
    record: dict[str, Any] = json.loads(line.removeprefix("<3>"))
    assert record["level"] == "error"
    assert "RuntimeError: handler failure on purpose" in record["exc_info"]
    for other in supervisor.lines:
        priority, brace, rest = other.partition("{")
        assert re.fullmatch(r"<[2-7]>", priority), other
        json.loads(brace + rest)
    return record


@pytest.mark.parametrize("mode", ["fork", "thread", "prefork"])
def test_what_python_prints_is_json_too(start_supervisor: StartSupervisor, mode: str) -> None:
    """A warning and an exception escaping a handler's own thread: one JSON line each."""
    keys: dict[str, Any] = {"mode": mode, **({"workers": 1} if mode == "prefork" else {})}
    supervisor = start_supervisor(
        supervisor_table(log_format="json")
        + server_table("noisy", "tests.logging_handler:NoisyHandler", **keys)
    )
    start = len(supervisor.lines)
    with connect(supervisor.inet("noisy")) as sock:
        sock.sendall(b"go\n")
        assert readline(sock) == b"noisy\n"
    supervisor.wait_for_log("a thread's own failure", start=start)
    supervisor.wait_for_log("a warning from the handler", start=start)
    found = records(supervisor, start)  # (every line an object)
    (warning,) = [r for r in found if "a warning from the handler" in r["message"]]
    assert warning["level"] == "warning", warning
    assert warning["server"] == "noisy", warning
    (failure,) = [r for r in found if "handler-thread" in r["message"]]
    assert failure["level"] == "error", failure
    assert "ValueError: a thread's own failure" in failure["exc_info"], failure

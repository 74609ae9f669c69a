"""Logging to systemd's journal (sd-daemon(3)): when stderr is the stream JOURNAL_STREAM names,
each line starts with its syslog priority and has no timestamp or tag of its own (the journal
adds both). A real supervisor, its stderr a pipe that JOURNAL_STREAM names as journald's would
be; tests/systemd/ checks the same under a real journal."""

import re
import signal

from tests.configs import server_table
from tests.conftest import StartSupervisor, exchange
from tests.integration.test_reload import reload

# Sets JOURNAL_STREAM to the device and inode of the supervisor's stderr, then runs it.
AS_JOURNAL = ["sh", "-c", 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$@"', "sh"]
# Another stream's: not stderr, so the usual format.
NOT_STDERR = ["env", "JOURNAL_STREAM=1:1"]

SERVERS = server_table("failing", "FailingHandler") + server_table(
    "failing-thread", "FailingHandler", mode="thread"
)


def test_each_line_carries_its_priority_and_nothing_the_journal_adds(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(SERVERS, wrapper=AS_JOURNAL)
    ready = supervisor.wait_for_log(r"ready: ").string
    assert re.fullmatch(rf"<6>ready: \d+ servers, pid {supervisor.pid}", ready)
    # A handler's failure in a fork child (forked by the fork server, which logs as the
    # supervisor does): error priority on every line of the traceback, the child's pid said.
    assert exchange(supervisor.inet("failing"), b"boom\n") == b""
    start = len(supervisor.lines)
    failed = supervisor.wait_for_log(r"failing: handler .* failed for client", start=0).string
    child = re.fullmatch(
        r"<3>pid (\d+): failing: handler tests\.handlers:FailingHandler .*", failed
    )
    assert child is not None, failed
    assert int(child[1]) != supervisor.pid
    supervisor.wait_for_log(r"RuntimeError: handler failure on purpose", start=start - 1)
    traceback = supervisor.lines[supervisor.lines.index(failed) :]
    ends = next(i for i, line in enumerate(traceback) if "RuntimeError: handler failure" in line)
    assert all(line.startswith("<3>") for line in traceback[: ends + 1]), traceback
    # The same in a thread of the supervisor: its own pid, so no pid said.
    assert exchange(supervisor.inet("failing-thread"), b"boom\n") == b""
    line = supervisor.wait_for_log(r"failing-thread: handler .* failed for client").string
    assert line.startswith("<3>failing-thread: handler tests.handlers:FailingHandler failed")
    # A rejected reload: an error; SIGTERM: information.
    rejected = reload(supervisor, "[servers.broken\n", outcome="reload failed, ")
    assert f"<3>{rejected}" in supervisor.lines
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert supervisor.lines[-1] == "<6>stopped"


def test_another_stream_keeps_the_text_format(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(SERVERS, wrapper=NOT_STDERR)
    ready = supervisor.wait_for_log(r"ready: ").string
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d [\d:,]+ INFO supervisor\[{supervisor.pid}\]: ready: .*", ready
    )

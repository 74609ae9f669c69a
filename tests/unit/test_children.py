"""ChildTable with faked system calls, exit status decoding, and one real fork."""

import contextlib
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import NoReturn

import pytest

from supervisor.children import WNOTHREAD, ChildTable, ExitStatus, Reaped, SystemCalls


class FakeKernel:
    """Fork hands out pids, wait4 replays queued statuses, kill records, the clock is set."""

    def __init__(self, pids: Iterable[int] = (101, 102, 103, 104)) -> None:
        self.pids: deque[int] = deque(pids)
        self.exited: deque[tuple[int, int, object]] = deque()
        self.no_children = False
        self.now = 100.0
        self.killed: list[tuple[int, int]] = []
        self.gone: set[int] = set()
        self.wait_calls: list[tuple[int, int]] = []

    def fork(self) -> int:
        return self.pids.popleft()

    def waitid(self, idtype: int, ident: int, options: int) -> object | None:
        """Peek (WNOWAIT) at the first process that has exited; stopped ones are not reported."""
        for pid, status, _ in self.exited:
            if pid and not os.WIFSTOPPED(status):
                return SimpleNamespace(si_pid=pid)
        if self.no_children:
            raise ChildProcessError(10, "No child processes")
        return None

    def wait4(self, pid: int, options: int) -> tuple[int, int, object]:
        self.wait_calls.append((pid, options))
        for entry in self.exited:
            if entry[0] == pid and not os.WIFSTOPPED(entry[1]):
                self.exited.remove(entry)
                return entry
        if self.no_children:
            raise ChildProcessError(10, "No child processes")
        return (0, 0, None)

    def kill(self, pid: int, signum: int) -> None:
        if pid in self.gone:
            raise ProcessLookupError(3, "No such process")
        self.killed.append((pid, signum))

    def clock(self) -> float:
        return self.now

    def calls(self) -> SystemCalls:
        return SystemCalls(
            fork=self.fork, waitid=self.waitid, wait4=self.wait4, kill=self.kill, clock=self.clock
        )


class InChildError(Exception):
    """Raised by a fake child body: in a real child, run_child ends in os._exit."""


def never_runs() -> NoReturn:
    raise AssertionError("run_child must not run in the parent")


def exited(code: int) -> int:
    return code << 8


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def table(kernel: FakeKernel) -> ChildTable[str]:
    return ChildTable(kernel.calls())


# --- ExitStatus ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected", "text"),
    [
        (exited(0), ExitStatus(code=0), "exited with status 0"),
        (exited(3), ExitStatus(code=3), "exited with status 3"),
        (exited(255), ExitStatus(code=255), "exited with status 255"),
        (signal.SIGKILL, ExitStatus(signal=signal.SIGKILL), "killed by signal SIGKILL"),
        (signal.SIGTERM, ExitStatus(signal=signal.SIGTERM), "killed by signal SIGTERM"),
        (signal.SIGSEGV | 0x80, ExitStatus(signal=signal.SIGSEGV), "killed by signal SIGSEGV"),
    ],
)
def test_exit_status_decode(status: int, expected: ExitStatus, text: str) -> None:
    decoded = ExitStatus.decode(status)
    assert decoded == expected
    assert str(decoded) == text


def test_only_exit_code_zero_is_ok() -> None:
    assert ExitStatus.decode(exited(0)).ok
    assert not ExitStatus.decode(exited(1)).ok
    assert not ExitStatus.decode(signal.SIGTERM).ok


def test_stopped_is_not_an_exit() -> None:
    stopped = (signal.SIGSTOP << 8) | 0x7F
    assert ExitStatus.decode(stopped) == ExitStatus(code=None, signal=None)


# --- spawn --------------------------------------------------------------------------------


def test_spawn_records_children_per_owner(table: ChildTable[str]) -> None:
    assert table.spawn("echo", never_runs) == 101
    assert table.spawn("echo", never_runs) == 102
    assert table.spawn("daytime", never_runs) == 103
    assert len(table) == 3
    assert (table.count("echo"), table.count("daytime"), table.count("other")) == (2, 1, 0)
    assert [(child.pid, child.owner) for child in table] == [
        (101, "echo"),
        (102, "echo"),
        (103, "daytime"),
    ]


def test_spawn_records_the_start_time(kernel: FakeKernel, table: ChildTable[str]) -> None:
    kernel.now = 42.5
    table.spawn("echo", never_runs)
    (child,) = table
    assert (child.started, child.signalled) == (42.5, None)


def test_spawn_in_the_child_runs_run_child_and_records_nothing() -> None:
    kernel = FakeKernel(pids=[0])
    table: ChildTable[str] = ChildTable(kernel.calls())

    def body() -> NoReturn:
        raise InChildError

    with pytest.raises(InChildError):
        table.spawn("echo", body)
    assert len(table) == 0
    assert table.count("echo") == 0


# --- reap ---------------------------------------------------------------------------------


def test_reap_with_nothing_exited(kernel: FakeKernel, table: ChildTable[str]) -> None:
    table.spawn("echo", never_runs)
    assert table.reap() == []
    assert len(table) == 1
    assert kernel.wait_calls == []  # waitid said nothing had exited


def test_reap_with_no_children_at_all(kernel: FakeKernel, table: ChildTable[str]) -> None:
    kernel.no_children = True
    assert table.reap() == []


def test_reap_collects_several_children_in_one_call(
    kernel: FakeKernel, table: ChildTable[str]
) -> None:
    table.spawn("echo", never_runs)
    table.spawn("echo", never_runs)
    table.spawn("daytime", never_runs)
    kernel.exited.extend([(101, exited(0), "rusage-101"), (103, signal.SIGKILL, "rusage-103")])
    kernel.now = 103.0

    reaped = table.reap()

    assert [(r.pid, r.status, r.rusage) for r in reaped] == [
        (101, ExitStatus(code=0), "rusage-101"),
        (103, ExitStatus(signal=signal.SIGKILL), "rusage-103"),
    ]
    assert [r.child.owner if r.child else None for r in reaped] == ["echo", "daytime"]
    assert [r.duration for r in reaped] == [3.0, 3.0]
    assert len(table) == 1
    assert [child.pid for child in table] == [102]
    assert (table.count("echo"), table.count("daytime")) == (1, 0)
    # wait4 was called once for each exited child, by pid, without blocking, and only for
    # children of the loop's own thread (never a handler thread's).
    flags = os.WNOHANG | WNOTHREAD
    assert kernel.wait_calls == [(101, flags), (103, flags)]


def test_reap_until_the_kernel_has_no_children(kernel: FakeKernel, table: ChildTable[str]) -> None:
    table.spawn("echo", never_runs)
    kernel.exited.append((101, exited(2), None))
    kernel.no_children = True
    (reaped,) = table.reap()
    assert (reaped.pid, reaped.status) == (101, ExitStatus(code=2))
    assert len(table) == 0


def test_reap_a_stranger_as_pid_1(kernel: FakeKernel, table: ChildTable[str]) -> None:
    table.reap_strangers = True
    table.spawn("echo", never_runs)
    kernel.exited.append((4242, exited(1), "rusage"))
    assert table.reap() == [Reaped(4242, ExitStatus(code=1), "rusage", None, 0.0)]
    assert len(table) == 1
    assert table.count("echo") == 1


def test_a_process_that_is_not_ours_is_left_to_its_owner(
    kernel: FakeKernel, table: ChildTable[str]
) -> None:
    """A handler thread's subprocess must keep its exit status for subprocess.run to read."""
    table.spawn("echo", never_runs)
    table.spawn("echo", never_runs)
    kernel.exited.extend([(4242, exited(3), None), (102, exited(0), None)])
    (reaped,) = table.reap()
    assert reaped.pid == 102
    assert [child.pid for child in table] == [101]
    assert [entry[0] for entry in kernel.exited] == [4242]  # still waitable by its owner


def test_reap_skips_a_stopped_child(kernel: FakeKernel, table: ChildTable[str]) -> None:
    table.spawn("echo", never_runs)
    kernel.exited.extend([(101, (signal.SIGSTOP << 8) | 0x7F, None), (0, 0, None)])
    assert table.reap() == []
    assert [child.pid for child in table] == [101]
    assert table.count("echo") == 1


def test_duration_comes_from_the_clock(kernel: FakeKernel, table: ChildTable[str]) -> None:
    kernel.now = 10.0
    table.spawn("echo", never_runs)
    kernel.now = 12.25
    table.spawn("echo", never_runs)
    kernel.now = 20.0
    kernel.exited.extend([(102, exited(0), None), (101, exited(0), None)])
    reaped = table.reap()
    assert [(r.pid, r.duration) for r in reaped] == [(102, 7.75), (101, 10.0)]


def test_reaped_child_keeps_its_record(kernel: FakeKernel, table: ChildTable[str]) -> None:
    table.spawn("echo", never_runs)
    table.signal_all(signal.SIGTERM)
    kernel.exited.append((101, signal.SIGTERM, None))
    (reaped,) = table.reap()
    assert reaped.child is not None
    assert (reaped.child.pid, reaped.child.owner, reaped.child.signalled) == (
        101,
        "echo",
        signal.SIGTERM,
    )


# --- signal_all ---------------------------------------------------------------------------


def test_signal_all_signals_every_live_child(kernel: FakeKernel, table: ChildTable[str]) -> None:
    table.spawn("echo", never_runs)
    table.spawn("daytime", never_runs)
    assert table.signal_all(signal.SIGTERM) == 2
    assert kernel.killed == [(101, signal.SIGTERM), (102, signal.SIGTERM)]
    assert [child.signalled for child in table] == [signal.SIGTERM, signal.SIGTERM]


def test_signal_all_skips_children_that_are_already_gone(
    kernel: FakeKernel, table: ChildTable[str]
) -> None:
    for _ in range(3):
        table.spawn("echo", never_runs)
    kernel.gone.add(102)
    assert table.signal_all(signal.SIGKILL) == 2
    assert kernel.killed == [(101, signal.SIGKILL), (103, signal.SIGKILL)]
    assert {child.pid: child.signalled for child in table} == {
        101: signal.SIGKILL,
        102: None,
        103: signal.SIGKILL,
    }


def test_signal_all_with_no_children(kernel: FakeKernel, table: ChildTable[str]) -> None:
    assert table.signal_all(signal.SIGTERM) == 0
    assert kernel.killed == []


# --- real processes -----------------------------------------------------------------------


@contextlib.contextmanager
def killed_at_exit(table: ChildTable[str]) -> Iterator[None]:
    """Whatever happens, leave no child of the table running or unreaped."""
    try:
        yield
    finally:
        for child in table:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)


def wait_exited(pid: int) -> None:
    """Block until `pid` has exited, leaving it to be reaped (WNOWAIT)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def only(reaped: list[Reaped[str]], pid: int) -> Reaped[str]:
    """The entry for `pid` (other tests' strays may be reaped too)."""
    (mine,) = [entry for entry in reaped if entry.pid == pid]
    return mine


def test_real_child_exit_code_is_reaped() -> None:
    table: ChildTable[str] = ChildTable()
    with killed_at_exit(table):
        pid = table.spawn("real", lambda: os._exit(3))
        assert table.count("real") == 1
        wait_exited(pid)
        reaped = only(table.reap(), pid)
    assert reaped.status == ExitStatus(code=3)
    assert reaped.child is not None
    assert reaped.child.owner == "real"
    assert reaped.duration >= 0.0
    assert reaped.rusage is not None
    assert len(table) == 0
    assert table.count("real") == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_real_child_killed_by_signal_all() -> None:
    read_end, write_end = os.pipe()
    table: ChildTable[str] = ChildTable()

    def block_forever() -> NoReturn:
        os.close(write_end)
        os.read(read_end, 1)  # never returns data: the parent keeps the write end open
        os._exit(0)

    try:
        with killed_at_exit(table):
            pid = table.spawn("real", block_forever)
            assert table.signal_all(signal.SIGKILL) == 1
            wait_exited(pid)
            reaped = only(table.reap(), pid)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert reaped.status == ExitStatus(signal=signal.SIGKILL)
    assert str(reaped.status) == "killed by signal SIGKILL"
    assert reaped.child is not None
    assert reaped.child.signalled == signal.SIGKILL
    assert len(table) == 0

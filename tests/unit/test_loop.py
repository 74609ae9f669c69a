"""The selectors loop: timers, the thread-safe call queue, readers."""

import functools
import itertools
import select
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator

import pytest

from supervisor.loop import CANCELLED_MIN, FAULT_PAUSE, SLICE, Loop

# A loop that does not stop by itself within this many seconds has failed the test.
GUARD = 5.0


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def run_guarded(loop: Loop) -> float:
    """Run `loop` until it stops; fail if it needed the guard timer. Return the seconds taken."""
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        loop.stop()

    guard = loop.call_later(GUARD, expire)
    start = time.monotonic()
    loop.run()
    elapsed = time.monotonic() - start
    guard.cancel()
    assert not expired, f"the loop did not stop within {GUARD} s"
    return elapsed


def recorder(log: list[str], name: str) -> Callable[[], None]:
    return lambda: log.append(name)


def test_timers_run_in_deadline_order_not_creation_order(loop: Loop) -> None:
    log: list[str] = []
    loop.call_later(0.03, recorder(log, "c"))
    loop.call_later(0.01, recorder(log, "a"))
    loop.call_later(0.02, recorder(log, "b"))
    loop.call_later(0.04, loop.stop)
    run_guarded(loop)
    assert log == ["a", "b", "c"]


def test_timers_with_the_same_delay_run_in_call_order(loop: Loop) -> None:
    log: list[str] = []
    for name in "abcde":
        loop.call_later(0, recorder(log, name))
    loop.call_later(0, loop.stop)
    run_guarded(loop)
    assert log == list("abcde")


def test_a_timer_does_not_run_before_its_deadline(loop: Loop) -> None:
    fired: list[float] = []
    start = time.monotonic()
    loop.call_later(0.05, lambda: fired.append(time.monotonic() - start))
    loop.call_later(0.05, loop.stop)
    run_guarded(loop)
    assert len(fired) == 1
    assert fired[0] >= 0.05


def test_cancelled_timer_does_not_run(loop: Loop) -> None:
    log: list[str] = []
    cancelled = loop.call_later(0, recorder(log, "cancelled"))
    loop.call_later(0.01, recorder(log, "kept"))
    loop.call_later(0.02, loop.stop)
    cancelled.cancel()
    run_guarded(loop)
    assert log == ["kept"]


def test_a_timer_can_cancel_a_later_one(loop: Loop) -> None:
    log: list[str] = []
    later = loop.call_later(0.02, recorder(log, "later"))

    def first() -> None:
        log.append("first")
        later.cancel()

    loop.call_later(0.01, first)
    loop.call_later(0.03, loop.stop)
    run_guarded(loop)
    assert log == ["first"]


def test_a_cancelled_far_timer_does_not_keep_the_loop_asleep(loop: Loop) -> None:
    far = loop.call_later(60, lambda: None)
    far.cancel()
    loop.call_later(0, loop.stop)
    assert run_guarded(loop) < GUARD


def test_a_timer_may_schedule_another(loop: Loop) -> None:
    log: list[str] = []

    def second() -> None:
        log.append("second")
        loop.stop()

    def first() -> None:
        log.append("first")
        loop.call_later(0, second)

    loop.call_later(0, first)
    run_guarded(loop)
    assert log == ["first", "second"]


def test_call_soon_threadsafe_wakes_a_loop_blocked_in_select(loop: Loop) -> None:
    blocked = threading.Event()
    ran_in: list[int] = []

    def stop_from_thread() -> None:
        blocked.wait(GUARD)

        def stop() -> None:
            ran_in.append(threading.get_ident())
            loop.stop()

        loop.call_soon_threadsafe(stop)

    # The loop sets the event from a timer, then has nothing to do but block in select():
    # the only timer left is the guard, GUARD seconds away.
    loop.call_later(0, blocked.set)
    thread = threading.Thread(target=stop_from_thread)
    thread.start()
    try:
        elapsed = run_guarded(loop)
    finally:
        thread.join(GUARD)
    assert ran_in == [threading.get_ident()]
    assert elapsed < GUARD / 2


def test_call_soon_threadsafe_before_run_keeps_order(loop: Loop) -> None:
    log: list[str] = []

    def post() -> None:
        for name in "abc":
            loop.call_soon_threadsafe(recorder(log, name))
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=post)
    thread.start()
    thread.join(GUARD)
    run_guarded(loop)
    assert log == ["a", "b", "c"]


def test_call_soon_threadsafe_many_times_from_several_threads(loop: Loop) -> None:
    count = 500
    done: list[int] = []

    def post(base: int) -> None:
        for i in range(count):
            loop.call_soon_threadsafe(functools.partial(done.append, base + i))

    threads = [threading.Thread(target=post, args=(n * count,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    loop.call_soon_threadsafe(loop.stop)
    run_guarded(loop)
    assert sorted(done) == list(range(4 * count))


def test_add_reader_fires_when_readable(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    received: list[bytes] = []

    def on_readable() -> None:
        received.append(a.recv(100))
        loop.stop()

    loop.add_reader(a, on_readable)
    b.sendall(b"ping")
    run_guarded(loop)
    loop.remove_reader(a)
    assert received == [b"ping"]


def test_reader_does_not_fire_until_data_arrives(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    log: list[str] = []

    def on_readable() -> None:
        log.append(a.recv(100).decode())
        loop.stop()

    def send() -> None:
        log.append("timer")
        b.sendall(b"data")

    loop.add_reader(a, on_readable)
    loop.call_later(0.01, send)
    run_guarded(loop)
    loop.remove_reader(a)
    assert log == ["timer", "data"]


def test_removed_reader_does_not_fire(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fired: list[bool] = []
    loop.add_reader(a, lambda: fired.append(True))
    loop.remove_reader(a)
    b.sendall(b"ignored")
    loop.call_later(0.01, loop.stop)
    run_guarded(loop)
    assert fired == []


def test_stop_from_a_reader_skips_the_other_ready_readers(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    calls: list[str] = []

    def on_a() -> None:
        calls.append("a")
        loop.stop()

    def on_b() -> None:
        calls.append("b")
        loop.stop()

    loop.add_reader(a, on_a)
    loop.add_reader(b, on_b)
    a.sendall(b"x")
    b.sendall(b"y")
    run_guarded(loop)
    loop.remove_reader(a)
    loop.remove_reader(b)
    assert calls in (["a"], ["b"])


def test_the_loop_can_run_again_after_stop(loop: Loop) -> None:
    log: list[str] = []
    for name in ("one", "two"):
        loop.call_later(0, recorder(log, name))
        loop.call_later(0, loop.stop)
        run_guarded(loop)
    assert log == ["one", "two"]


def test_callbacks_from_many_threads_all_run_with_coalesced_wake_ups() -> None:
    """call_soon_threadsafe writes a wake-up byte only when none is on its way: no callback
    may be left in the queue with nothing to wake the loop for it."""
    loop = Loop()
    threads, calls = 8, 5000
    ran: list[int] = []

    def callback() -> None:
        ran.append(1)
        if len(ran) == threads * calls:
            loop.stop()

    def caller() -> None:
        for _ in range(calls):
            loop.call_soon_threadsafe(callback)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    loop.call_later(20, loop.stop)  # a lost wake-up would leave the loop asleep: fail, not hang
    try:
        loop.run()
    finally:
        for worker in workers:
            worker.join()
        loop.close()
    assert len(ran) == threads * calls


def test_a_call_racing_with_the_loops_read_of_the_wake_up_bytes_is_not_stranded() -> None:
    """The interleaving the flag protocol must survive, played deterministically: another
    thread's call lands while the loop reads the wake-up bytes. Afterwards, a new call must
    still wake the loop (a byte must be readable), or its callback would wait forever."""
    loop = Loop()
    ran: list[str] = []
    real = loop._wake_reader
    injected = False

    class Racing:
        def recv(self, size: int) -> bytes:
            nonlocal injected
            if not injected:
                injected = True
                loop.call_soon_threadsafe(lambda: ran.append("racing"))
            return real.recv(size)

    loop.call_soon_threadsafe(lambda: ran.append("first"))
    loop._wake_reader = Racing()  # type: ignore[assignment]
    loop._run_pending()
    loop._wake_reader = real
    assert ran == ["first", "racing"]
    loop.call_soon_threadsafe(lambda: ran.append("later"))
    readable, _, _ = select.select([real], [], [], 0)
    assert readable == [real]
    loop.close()


# -- the fault barrier ---------------------------------------------------------------------------


def test_a_failing_reader_is_counted_paused_and_the_loop_goes_on(
    loop: Loop, pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises on every readiness: logged once with its traceback, counted each
    time, out of the selector for a moment (no spin), and the other callbacks still run."""
    a, b = pair
    b.send(b"x")  # a stays readable: its callback never reads
    calls: list[float] = []

    def broken() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("a bug")

    loop.add_reader(a, broken)
    ticks: list[str] = []
    loop.call_later(0.05, recorder(ticks, "timer ran"))
    loop.call_later(FAULT_PAUSE * 2.5, loop.stop)
    run_guarded(loop)
    assert ticks == ["timer ran"]
    assert 2 <= len(calls) <= 3  # once per FAULT_PAUSE, not thousands of times
    assert all(later - earlier >= FAULT_PAUSE * 0.9 for earlier, later in itertools.pairwise(calls))
    assert loop.faults == len(calls)
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1  # the others within FAULT_LOG_EVERY are counted, not logged
    assert "internal error in test_a_failing_reader" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert "a bug" in str(errors[0].exc_info[1])


def test_a_paused_reader_can_be_removed_or_replaced_by_its_owner(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    b.send(b"x")
    log: list[str] = []

    def broken() -> None:
        log.append("broken")
        raise RuntimeError("a bug")

    def fixed() -> None:
        log.append("fixed")
        a.recv(1)
        loop.remove_reader(a)  # (not paused any more: a real unregister)
        loop.stop()

    def replace() -> None:
        loop.remove_reader(a)
        loop.add_reader(a, fixed)

    loop.add_reader(a, broken)
    loop.call_later(0.01, replace)
    run_guarded(loop)
    assert log == ["broken", "fixed"]
    assert loop.faults == 1


def test_failing_timers_and_thread_calls_do_not_stop_the_loop(loop: Loop) -> None:
    log: list[str] = []

    def explode() -> None:
        raise ValueError("boom")

    loop.call_later(0.0, explode)
    loop.call_later(0.01, recorder(log, "after the timer"))
    worker = threading.Thread(target=lambda: loop.call_soon_threadsafe(explode))
    worker.start()
    worker.join()
    loop.call_soon_threadsafe(recorder(log, "after the call"))
    loop.call_later(0.02, loop.stop)
    run_guarded(loop)
    assert sorted(log) == ["after the call", "after the timer"]
    assert loop.faults == 2


def test_system_exit_still_ends_the_loop(loop: Loop) -> None:
    def leave() -> None:
        raise SystemExit(3)

    loop.call_later(0.0, leave)
    with pytest.raises(SystemExit):
        run_guarded(loop)


# -- jobs: long work a step at a time, between the turns that serve the sockets --------------


def then_stop(loop: Loop, results: list[object]) -> Callable[[object], None]:
    """A job's `done`: keep what it returned, and stop the loop."""

    def done(value: object) -> None:
        results.append(value)
        loop.stop()

    return done


def test_a_job_runs_its_steps_and_hands_on_what_it_returns(loop: Loop) -> None:
    done: list[object] = []

    def steps() -> Generator[None, None, str]:
        for _ in range(3):
            yield
        return "rendered"

    loop.start_job("test", steps(), then_stop(loop, done), loop.stop)
    run_guarded(loop)
    assert done == ["rendered"]


def test_a_reader_is_served_between_the_slices_of_a_long_job(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    """A job of steps worth 50 slices: the loop stops running them after SLICE and serves a
    ready socket before the job's end, not after."""
    events: list[str] = []
    a, b = pair

    def steps() -> Generator[None, None, None]:
        for _ in range(200):
            time.sleep(SLICE / 4)  # (a step of work: 4 of them use one slice)
            events.append("step")
            yield

    def on_readable() -> None:
        a.recv(16)
        events.append("read")
        loop.remove_reader(a)

    loop.start_job("test", steps(), lambda _: loop.stop(), loop.stop)
    loop.add_reader(a, on_readable)
    b.send(b"x")
    run_guarded(loop)
    assert events.count("step") == 200
    assert "read" in events[:10], events.index("read")  # within the first slices


def test_two_jobs_take_turns(loop: Loop) -> None:
    events: list[str] = []

    def steps(name: str) -> Generator[None, None, None]:
        for _ in range(3):
            events.append(name)
            yield

    loop.start_job("a", steps("a"), lambda _: None, loop.stop)
    loop.start_job("b", steps("b"), lambda _: loop.stop(), loop.stop)
    run_guarded(loop)
    assert events == ["a", "b"] * 3


def test_a_failing_step_is_counted_and_the_job_told_and_the_loop_goes_on(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    failed: list[bool] = []
    finished: list[object] = []

    def broken() -> Generator[None, None, None]:
        yield
        raise RuntimeError("a bug in a step")

    def fine() -> Generator[None, None, int]:
        yield
        yield
        return 7

    loop.start_job("broken", broken(), finished.append, lambda: failed.append(True))
    loop.start_job("fine", fine(), then_stop(loop, finished), loop.stop)
    run_guarded(loop)
    assert (failed, finished, loop.faults) == ([True], [7], 1)
    assert "internal error in job broken; going on" in caplog.text


def test_without_jobs_the_loop_sleeps_until_its_timer(loop: Loop) -> None:
    """A job makes the loop poll (select with no wait) only while it has steps left."""

    def one_step() -> Generator[None, None, None]:
        yield

    loop.start_job("short", one_step(), lambda _: None, lambda: None)
    loop.call_later(0.2, loop.stop)
    turns_before = loop.turn
    elapsed = run_guarded(loop)
    assert elapsed >= 0.2
    assert loop.turn - turns_before <= 3  # (the job's turn, the sleep, the timer's)


def test_cancelled_timers_behind_a_live_one_do_not_pile_up(loop: Loop) -> None:
    """A flood of connections, each cancelling a long timeout while short ones keep coming:
    the heap is rebuilt without the cancelled ones, not left to grow until they reach its top."""
    loop.call_later(1.0, lambda: None)  # (always ahead of the long ones)
    largest = 0
    for _ in range(10_000):
        loop.call_later(300.0, lambda: None).cancel()
        largest = max(largest, len(loop._timers))
    assert largest <= 2 * CANCELLED_MIN + 4, largest
    live = loop.call_later(300.0, loop.stop)
    loop.call_later(0.01, loop.stop)
    run_guarded(loop)
    assert not live.cancelled
    assert live in loop._timers  # (a live timer is kept by the rebuilds)

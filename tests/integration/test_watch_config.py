"""`watch_config = true`: the supervisor reloads itself when its file changes on disk, in each
way a file changes (a Kubernetes ConfigMap's symlink swap, an editor's rename, a write in
place), once per content, without waking up while nothing changes."""

import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.configs import METRICS_ANY_PORT, server_table, supervisor_table
from tests.conftest import StartSupervisor, Supervisor, connect, exchange, readline

WATCHED = supervisor_table(watch_config=True)
FIRST = server_table("first", "LineEchoHandler", mode="thread")
SECOND = server_table("second", "LineEchoHandler", mode="thread")
RELOAD_WITHIN = 1.0  # seconds from the change to the reload's log line (issue 18's bound)
IDLE_WINDOW = 1.5  # seconds observed while idle (as test_idle.py)


def listening(supervisor: Supervisor, name: str, start: int) -> tuple[str, int]:
    """The address the server `name` was (re)bound to, from its log line after line `start`."""
    match = supervisor.wait_for_log(rf"{name}: listening on tcp://(\S+):(\d+) ", start=start)
    return match.group(1), int(match.group(2))


def changed_within_bound(
    supervisor: Supervisor, change: Callable[[], object], expect: str = "reloaded: "
) -> re.Match[str]:
    """Make `change` and wait for the `expect` line, which must come within RELOAD_WITHIN."""
    seen = len(supervisor.lines)
    began = time.monotonic()
    change()
    match = supervisor.wait_for_log(expect, start=seen)
    took = time.monotonic() - began
    assert took < RELOAD_WITHIN, f"the reload came {took:.3f}s after the change"
    return match


def lines_matching(supervisor: Supervisor, pattern: str) -> list[str]:
    return [line for line in supervisor.log.splitlines() if re.search(pattern, line)]


def inotify_descriptors(pid: int) -> int:
    """How many inotify instances the process holds (its watch_config's)."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd) == "anon_inode:inotify"
        except FileNotFoundError:  # (closed meanwhile)
            continue
    return count


def asleep_in_the_loop(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process sleeps in epoll_wait (its start-up is over)."""
    deadline = time.monotonic() + timeout
    wchan = Path(f"/proc/{pid}/wchan")
    while wchan.read_text() != "do_epoll_wait":
        assert time.monotonic() < deadline, f"not asleep in epoll_wait: {wchan.read_text()}"
        time.sleep(0.01)


class ConfigMap:
    """A directory laid out as the kubelet mounts a ConfigMap: `NAME -> ..data/NAME`, `..data`
    a symlink to a timestamped directory, swapped by a rename for each update."""

    def __init__(self, root: Path, name: str = "supervisor.toml") -> None:
        self.root = root
        self.name = name
        self.versions = 0
        root.mkdir()
        (root / name).symlink_to(f"..data/{name}")

    @property
    def path(self) -> Path:
        return self.root / self.name

    def update(self, text: str) -> None:
        """As the kubelet does it: a new directory, `..data_tmp` to it, renamed over `..data`,
        then the old directory removed."""
        self.versions += 1
        version = self.root / f"..2026_12_06_00_00_0{self.versions}.{self.versions}"
        version.mkdir()
        (version / self.name).write_text(text)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        (self.root / "..data_tmp").symlink_to(version.name)
        os.rename(self.root / "..data_tmp", self.root / "..data")
        if old is not None:
            for entry in (self.root / old).iterdir():
                entry.unlink()
            (self.root / old).rmdir()


@pytest.fixture
def configmap(tmp_path: Path) -> ConfigMap:
    return ConfigMap(tmp_path / "config")


@pytest.fixture
def started() -> Iterator[list[Supervisor]]:
    """Supervisors started on a path of the test's own; each stopped at the end."""
    supervisors: list[Supervisor] = []
    yield supervisors
    for supervisor in supervisors:
        supervisor.stop()


def test_a_configmap_update_reloads_within_a_second(
    configmap: ConfigMap, started: list[Supervisor]
) -> None:
    configmap.update(WATCHED + FIRST + METRICS_ANY_PORT)
    supervisor = Supervisor(configmap.path)
    started.append(supervisor)
    supervisor.wait_ready()
    assert exchange(supervisor.inet("first"), b"one\n").endswith(b"one\n")

    seen = len(supervisor.lines)
    changed_within_bound(
        supervisor, lambda: configmap.update(WATCHED + FIRST + SECOND + METRICS_ANY_PORT)
    )
    assert exchange(listening(supervisor, "second", seen), b"two\n").endswith(b"two\n")
    assert exchange(supervisor.inet("first"), b"still\n").endswith(b"still\n")
    # The directory the file resolved to is gone; the next update is seen all the same.
    seen = len(supervisor.lines)
    changed_within_bound(supervisor, lambda: configmap.update(WATCHED + SECOND + METRICS_ANY_PORT))
    supervisor.wait_for_log(r"reloaded: .*removed first", start=seen)
    assert len(lines_matching(supervisor, r"watch_config: .* changed; reloading")) == 2


def test_a_release_directory_switched_by_its_link_reloads(
    tmp_path: Path, started: list[Supervisor]
) -> None:
    """`-c APP/current/conf.toml`, `current -> releases/1`, switched to releases/2 by a rename
    (as `ln -sfn` then `mv -T` do); releases/1 stays as it was."""
    for release, servers in (("1", FIRST), ("2", FIRST + SECOND)):
        (tmp_path / "releases" / release).mkdir(parents=True)
        (tmp_path / "releases" / release / "conf.toml").write_text(
            WATCHED + servers + METRICS_ANY_PORT
        )
    (tmp_path / "current").symlink_to("releases/1")
    supervisor = Supervisor(tmp_path / "current" / "conf.toml")
    started.append(supervisor)
    supervisor.wait_ready()

    def switch() -> None:
        (tmp_path / "next").symlink_to("releases/2")
        os.rename(tmp_path / "next", tmp_path / "current")

    seen = len(supervisor.lines)
    changed_within_bound(supervisor, switch)
    assert exchange(listening(supervisor, "second", seen), b"two\n").endswith(b"two\n")


def test_a_directory_removed_and_made_again_is_watched_again(
    tmp_path: Path, started: list[Supervisor]
) -> None:
    directory = tmp_path / "conf"
    directory.mkdir()
    (directory / "s.toml").write_text(WATCHED + FIRST + METRICS_ANY_PORT)
    supervisor = Supervisor(directory / "s.toml")
    started.append(supervisor)
    supervisor.wait_ready()
    seen = len(supervisor.lines)
    shutil.rmtree(directory)
    supervisor.wait_for_log(r"reload failed, .*cannot read the file", start=seen)
    assert exchange(supervisor.inet("first"), b"on\n").endswith(b"on\n")
    seen = len(supervisor.lines)
    directory.mkdir()
    (directory / "s.toml").write_text(WATCHED + FIRST + SECOND + METRICS_ANY_PORT)
    supervisor.wait_for_log("reloaded: added second", start=seen)


def test_a_change_during_start_up_is_not_lost(tmp_path: Path, started: list[Supervisor]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = tmp_path / "s.toml"
    slow = server_table("slow", "tests.blocking_import:Handler", mode="thread")
    path.write_text(WATCHED + slow + METRICS_ANY_PORT)
    supervisor = Supervisor(path, {"BLOCKING_IMPORT_FIFO": str(fifo)})
    started.append(supervisor)
    supervisor.wait_for_log("blocking import: waiting")
    path.write_text(WATCHED + slow + FIRST + METRICS_ANY_PORT)  # (loaded already: not this)
    with fifo.open("wb") as writer:
        writer.write(b"x")
    supervisor.wait_ready()
    supervisor.wait_for_log("reloaded: added first")


def test_a_file_written_in_two_steps_is_read_once_whole(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(WATCHED + FIRST)
    path = supervisor.config
    text = WATCHED + FIRST + SECOND + METRICS_ANY_PORT
    half = text.index("[servers.second]") + 5  # (a file cut there is not TOML)
    seen = len(supervisor.lines)
    with path.open("w") as writer:
        writer.write(text[:half])
        writer.flush()
        time.sleep(0.3)  # the writer's pause (longer than the debounce), not a synchronisation
        writer.write(text[half:])
    supervisor.wait_for_log("reloaded: added second", start=seen)
    assert not lines_matching(supervisor, "reload failed"), supervisor.log
    assert len(lines_matching(supervisor, r": reloading /")) == 1, supervisor.log


def test_an_editors_rename_and_a_write_in_place_reload(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(WATCHED + FIRST)
    path = supervisor.config

    def save_as_an_editor_does(text: str) -> None:
        temporary = path.with_name(f".{path.name}.swp")
        temporary.write_text(text)
        os.rename(temporary, path)

    seen = len(supervisor.lines)
    changed_within_bound(
        supervisor, lambda: save_as_an_editor_does(WATCHED + FIRST + SECOND + METRICS_ANY_PORT)
    )
    assert exchange(listening(supervisor, "second", seen), b"x\n").endswith(b"x\n")
    match = changed_within_bound(
        supervisor, lambda: path.write_text(WATCHED + SECOND + METRICS_ANY_PORT)
    )
    assert "removed first" in match.string


def test_a_broken_file_is_logged_once_and_the_old_configuration_serves(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(supervisor_table(watch_config=True, log_level="debug") + FIRST)
    path = supervisor.config
    good = path.read_text()
    changed_within_bound(
        supervisor,
        lambda: path.write_text(good + "[servers.broken]\nmode = 'fork'\n"),
        expect=r"reload failed, still running the previous configuration: .*servers\.broken",
    )
    assert exchange(supervisor.inet("first"), b"served\n").endswith(b"served\n")
    # The same bytes written again: nothing is tried again.
    seen = len(supervisor.lines)
    path.write_text(path.read_text())
    supervisor.wait_for_log("holds the rejected content: nothing to do", start=seen)
    path.write_text(good.replace('"debug"', '"info"') + SECOND)
    supervisor.wait_for_log("reloaded: added second", start=seen)
    assert len(lines_matching(supervisor, "reload failed")) == 1, supervisor.log
    assert len(lines_matching(supervisor, r": reloading /")) == 2, supervisor.log


def test_an_idle_watching_supervisor_does_not_wake_up(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(WATCHED + FIRST)
    assert inotify_descriptors(supervisor.pid) == 1
    process = psutil.Process(supervisor.pid)
    asleep_in_the_loop(supervisor.pid)  # (from now on each wake-up counts one switch)
    before = process.num_ctx_switches().voluntary
    time.sleep(IDLE_WINDOW)  # an observation window, not a synchronisation
    woke = process.num_ctx_switches().voluntary - before
    assert woke == 0, f"{woke} voluntary context switches in {IDLE_WINDOW}s while idle"


def test_turned_off_by_a_reload_it_stops_watching(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(WATCHED + FIRST)
    assert inotify_descriptors(supervisor.pid) == 1
    changed_within_bound(supervisor, lambda: supervisor.config.write_text(FIRST + METRICS_ANY_PORT))
    assert inotify_descriptors(supervisor.pid) == 0
    # And on again with SIGHUP.
    seen = len(supervisor.lines)
    supervisor.config.write_text(WATCHED + FIRST + METRICS_ANY_PORT)
    supervisor.signal(signal.SIGHUP)
    supervisor.wait_for_log("watch_config: reloading when", start=seen)
    assert inotify_descriptors(supervisor.pid) == 1


def test_children_do_not_hold_the_watch(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        supervisor_table(watch_config=True, fork_server=False) + server_table("hold", "PidHandler")
    )
    with connect(supervisor.inet("hold")) as client:
        child = int(readline(client))
        held = inotify_descriptors(child)
        client.sendall(b"done\n")
        assert readline(client) == b"bye\n"
    assert held == 0

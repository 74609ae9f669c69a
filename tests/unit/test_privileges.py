"""privileges.py, the child set-up it plans, unix socket file permissions, and the config rules
for thread and inline servers. The process's identity is faked (os.geteuid and friends), so
these run the same as root or not."""

import logging
import os
import resource
import stat
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import config, forkserver, privileges
from supervisor.addresses import Address, Scheme
from supervisor.config import SocketFile
from supervisor.errors import ConfigError
from supervisor.sockets import SocketFileError, apply_socket_file, bind
from tests.configs import server_table

SOURCE = "etc/supervisor.toml"
NOBODY = 65534
FORK = server_table("echo", "BaseEchoHandler")  # a fork-mode server


def parse(toml: str) -> config.Config:
    return config.parse(tomllib.loads(textwrap.dedent(toml)), SOURCE)


def error_of(toml: str, starting: bool = True) -> str:
    with pytest.raises(ConfigError) as caught:
        privileges.check(parse(toml), starting=starting)
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.exit_status == 78
    return message


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root with every capability, and no escape hatch in the environment."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "getresuid", lambda: (0, 0, 0))
    monkeypatch.setattr(os, "getresgid", lambda: (0, 0, 0))
    monkeypatch.setattr(privileges, "_capable", lambda capability: True)
    monkeypatch.delenv(privileges.ALLOW_ROOT_ENV, raising=False)


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unprivileged user, 1000:1000."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getresuid", lambda: (1000, 1000, 1000))
    monkeypatch.setattr(os, "getresgid", lambda: (1000, 1000, 1000))
    monkeypatch.setattr(privileges, "_capable", lambda capability: False)


# -- handlers as root ------------------------------------------------------------------------------


@pytest.mark.usefixtures("as_root")
def test_root_handlers_are_refused_naming_supervisor_user() -> None:
    message = error_of(FORK)
    assert message.startswith(f"{SOURCE}: supervisor.user: the handlers of servers.echo would ")
    assert "allow_root = true" in message
    assert "SUPERVISOR_ALLOW_ROOT=1" in message


@pytest.mark.usefixtures("as_root")
def test_allow_root_and_the_environment_let_root_handlers_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    privileges.check(parse("[supervisor]\nallow_root = true\n" + FORK), starting=True)
    monkeypatch.setenv(privileges.ALLOW_ROOT_ENV, "1")
    privileges.check(parse(FORK), starting=True)
    monkeypatch.setenv(privileges.ALLOW_ROOT_ENV, "yes")  # only "1" counts
    error_of(FORK)


@pytest.mark.usefixtures("as_root")
def test_a_user_to_drop_to_makes_root_handlers_go_away() -> None:
    privileges.check(parse('[supervisor]\nuser = "nobody"\n' + FORK), starting=True)
    message = error_of('[supervisor]\nuser = "root"\n' + FORK)
    assert ": supervisor.user: the handlers of servers.echo would run as root" in message


@pytest.mark.usefixtures("as_root")
def test_a_reload_still_running_as_root_cannot_count_on_a_new_supervisor_user() -> None:
    message = error_of('[supervisor]\nuser = "nobody"\n' + FORK, starting=False)
    assert ": supervisor.user: " in message
    assert "until the next start" in message


@pytest.mark.usefixtures("as_root")
def test_servers_with_their_own_user_leave_the_others_named() -> None:
    toml = FORK + 'user = "nobody"\n' + FORK.replace("echo", "other")
    assert f"{SOURCE}: servers.other.user: the handlers of servers.other" in error_of(toml)
    thread = FORK + 'user = "nobody"\n' + FORK.replace("echo", "t") + 'mode = "thread"\n'
    assert f"{SOURCE}: servers.t.mode: the handlers of servers.t would run as root, inside" in (
        error_of(thread)
    )
    privileges.check(parse(FORK + 'user = "nobody"\n'), starting=True)


# -- switching user --------------------------------------------------------------------------------


@pytest.mark.usefixtures("as_user")
def test_switching_user_needs_root() -> None:
    message = error_of('[supervisor]\nuser = "nobody"\n' + FORK)
    assert message == (
        f"{SOURCE}: supervisor.user: running the supervisor as nobody:nogroup needs root, "
        "and this process runs as uid 1000"
    )
    message = error_of(FORK + 'user = "nobody"\n')
    assert message.startswith(f"{SOURCE}: servers.echo.user: running its children as nobody")
    assert message.endswith("the supervisor must keep root (no [supervisor] user)")


def test_being_that_user_already_is_no_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    monkeypatch.setattr(os, "getresuid", lambda: (NOBODY,) * 3)
    monkeypatch.setattr(os, "getresgid", lambda: (NOBODY,) * 3)
    privileges.check(parse('[supervisor]\nuser = "nobody"\n' + FORK), starting=True)
    privileges.check(parse(FORK + 'user = "nobody"\n'), starting=True)
    privileges.drop(parse('[supervisor]\nuser = "nobody"\n' + FORK))  # a no-op: no setuid


@pytest.mark.usefixtures("as_user")
def test_a_reload_ignores_a_changed_supervisor_user() -> None:
    """It applies at the next start (logged by the supervisor), whoever runs now."""
    privileges.check(parse('[supervisor]\nuser = "nobody"\n' + FORK), starting=False)


# -- child limits ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("as_user")
def test_limits_above_the_hard_limit_need_root() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    message = error_of(FORK + f"rlimit_nofile = {hard + 1}\n")
    assert message == (
        f"{SOURCE}: servers.echo.rlimit_nofile: {hard + 1} is above the hard limit ({hard}), "
        "which only root (with CAP_SYS_RESOURCE) may raise"
    )
    assert ": supervisor.rlimit_nofile: " in error_of(
        f"[supervisor]\nrlimit_nofile = {hard + 1}\n" + FORK
    )
    privileges.check(parse(FORK + f"rlimit_nofile = {hard}\n"), starting=True)


@pytest.mark.usefixtures("as_user")
def test_a_lower_niceness_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getpriority", lambda which, who: 5)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (0, 0))  # no RLIMIT_NICE leeway
    message = error_of(FORK + "nice = 4\n")
    assert message == (
        f"{SOURCE}: servers.echo.nice: 4 is below 5, the lowest niceness this process may "
        "set without root (with CAP_SYS_NICE)"
    )
    privileges.check(parse(FORK + "nice = 5\n"), starting=True)


@pytest.mark.usefixtures("as_root")
def test_root_is_unprivileged_for_limits_once_it_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getpriority", lambda which, who: 0)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (0, 0))
    privileges.check(parse("[supervisor]\nallow_root = true\n" + FORK + "nice = -5\n"), True)
    message = error_of('[supervisor]\nuser = "nobody"\n' + FORK + "nice = -5\n")
    assert ": servers.echo.nice: -5 is below 0" in message


@pytest.mark.usefixtures("as_root")
def test_no_process_gets_more_files_than_nr_open() -> None:
    most = int(Path(privileges.NR_OPEN).read_text())
    message = error_of("[supervisor]\nallow_root = true\n" + FORK + f"rlimit_nofile = {most + 1}")
    assert message.endswith(f"is above the system's maximum (fs.nr_open = {most})")


def test_child_setup_is_none_without_limits_or_user() -> None:
    loaded = parse(FORK + FORK.replace("echo", "t") + 'mode = "thread"\n')
    assert [privileges.child_setup(server) for server in loaded.servers.values()] == [None, None]


def test_child_setup_plans_limits_then_user() -> None:
    loaded = parse(
        FORK + 'user = "nobody"\nrlimit_as = 512\nrlimit_cpu = 3\nrlimit_nofile = 64\nnice = 7'
    )
    assert privileges.child_setup(loaded.servers["echo"]) == (
        (
            (resource.RLIMIT_AS, 512 * 2**20, 512 * 2**20),
            (resource.RLIMIT_CPU, 3, 3),
            (resource.RLIMIT_NOFILE, 64, 64),
        ),
        7,
        (NOBODY, NOBODY),
    )


def test_a_child_that_cannot_apply_its_setup_says_so_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing is applied here: the soft limit above the hard one fails first."""
    bad = (((resource.RLIMIT_NOFILE, 10, 5),), None, None)
    log = logging.getLogger("supervisor")
    with caplog.at_level(logging.ERROR, "supervisor"):
        assert forkserver.set_up_child("echo", bad, lambda: log) is False
    [record] = caplog.records
    assert record.getMessage().startswith(f"echo: child {os.getpid()} cannot apply its limits")
    assert "not running the handler" in record.getMessage()


# -- thread and inline servers: the config rules ---------------------------------------------------


@pytest.mark.parametrize("mode", ["thread", "inline"])
@pytest.mark.parametrize("key", ["user = 'nobody'", "rlimit_as = 64", "nice = 5"])
def test_in_process_modes_refuse_child_settings(mode: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(FORK + f'mode = "{mode}"\n{key}\n')
    name = key.split(" ", maxsplit=1)[0]
    assert str(caught.value).startswith(
        f"{SOURCE}: servers.echo.{name}: not available in {mode} mode: its handlers run inside "
        "the supervisor process"
    )
    assert "[supervisor] user" in str(caught.value)


def test_in_process_modes_leave_supervisor_defaults_for_children_out() -> None:
    loaded = parse("[supervisor]\nrlimit_as = 64\nnice = 3\n" + FORK + 'mode = "thread"\n')
    limits = loaded.servers["echo"].limits
    assert (limits.rlimit_as, limits.nice) == (0, None)
    assert loaded.supervisor.limits.rlimit_as == 64


# -- unix socket files -----------------------------------------------------------------------------


@pytest.fixture
def socket_path() -> Iterator[str]:
    directory = Path(os.path.realpath("/tmp")) / f"sv-unit-{os.getpid()}"
    directory.mkdir(exist_ok=True)
    path = str(directory / "s.sock")
    yield path
    for leftover in directory.iterdir():
        leftover.unlink()
    directory.rmdir()


def permissions(path: str) -> tuple[int, int, int]:
    info = os.lstat(path)
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


@pytest.mark.parametrize("scheme", ["unix", "unixgram"])
def test_socket_file_settings_are_applied_and_taken_back(socket_path: str, scheme: Scheme) -> None:
    default = (0o777 & ~current_umask(), os.geteuid(), os.getegid())
    group = os.getgroups()[0] if os.getgroups() else os.getegid()
    listener = bind(Address(scheme, path=socket_path), 8, SocketFile(mode=0o600, gid=group))
    try:
        assert permissions(socket_path) == (0o600, os.geteuid(), group)
        assert listener.file_default == default
        apply_socket_file(listener, SocketFile(mode=0o640))
        assert permissions(socket_path)[0] == 0o640
        apply_socket_file(listener, SocketFile())  # a reload that removes them: as bound
        assert permissions(socket_path) == default
    finally:
        listener.close()
    assert not os.path.exists(socket_path)


def test_a_socket_file_replaced_by_something_else_is_not_touched(socket_path: str) -> None:
    listener = bind(Address("unix", path=socket_path), 8)
    try:
        os.unlink(socket_path)
        Path(socket_path).write_text("not a socket")
        with pytest.raises(SocketFileError, match="is not our socket any more"):
            apply_socket_file(listener, SocketFile(mode=0o600))
        assert permissions(socket_path)[0] == 0o777 & ~current_umask() & 0o666
    finally:
        listener.socket.close()


def current_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def test_a_symlink_swapped_in_for_the_socket_file_is_not_followed(socket_path: str) -> None:
    """Whoever may write the directory must not get a root supervisor to chmod another file."""
    target = Path(socket_path).with_name("target")
    target.write_text("root's")
    target.chmod(0o600)
    listener = bind(Address("unix", path=socket_path), 8)
    try:
        os.unlink(socket_path)
        os.symlink(target, socket_path)
        with pytest.raises(SocketFileError, match="is not our socket any more"):
            apply_socket_file(listener, SocketFile(mode=0o666))
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    finally:
        listener.socket.close()


def test_another_socket_in_place_of_ours_is_not_touched(socket_path: str) -> None:
    listener = bind(Address("unix", path=socket_path), 8)
    try:
        os.unlink(socket_path)
        other = bind(Address("unix", path=socket_path), 8)
        before = permissions(socket_path)
        with pytest.raises(SocketFileError, match="is not our socket any more"):
            apply_socket_file(listener, SocketFile(mode=0o600))
        assert permissions(socket_path) == before
        other.close()
    finally:
        listener.socket.close()


def test_a_server_user_the_process_already_is_needs_no_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "getresuid", lambda: (NOBODY,) * 3)
    monkeypatch.setattr(os, "getresgid", lambda: (NOBODY,) * 3)
    loaded = parse(FORK + 'user = "nobody"\n')
    assert privileges.child_setup(loaded.servers["echo"]) is None  # (setgroups would fail)
    with_limits = parse(FORK + 'user = "nobody"\nnice = 3\n')
    assert privileges.child_setup(with_limits.servers["echo"]) == ((), 3, None)

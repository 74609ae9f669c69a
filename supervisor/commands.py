"""The control commands: `supervisor reload`, `upgrade`, `stop` and `status`, run against a live
instance.

The instance is found through its pidfile (from the configuration, or `--pidfile`): it is live
when its lock is held by the process it names (see pidfile.py), in a directory only trusted
users can change (rundir.py). `stop` signals that process; `reload` and `status` ask the control
socket next to the pidfile, once its listener is known to be that process, and it answers only
root and the supervisor's own user.
"""

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import psutil

from supervisor import config, control, logs, pidfile, rundir
from supervisor.errors import ConfigError, SupervisorError, UsageError, describe


class NotRunning(SupervisorError):
    """No live supervisor owns the pidfile."""

    exit_status = os.EX_UNAVAILABLE


class NotPermitted(SupervisorError):
    """The running supervisor belongs to another user."""

    exit_status = os.EX_NOPERM


PERMISSION_HINT = "run it as root or as the supervisor's user"


class StillRunning(SupervisorError):
    """`stop` gave up waiting."""

    exit_status = os.EX_TEMPFAIL


@dataclass(frozen=True)
class Target:
    """Where to find the running instance: its pidfile, and the users trusted to run it
    (root, this user, and the configuration's [supervisor] user when it can be read)."""

    pidfile: str
    trusted: frozenset[int]


def find_pidfile(config_path: str, given: str | None) -> Target:
    """The pidfile to use: `--pidfile`, or the configuration's, even from a broken file."""
    trusted = rundir.trusted_users(None)
    if given is not None:
        return Target(given, frozenset(trusted))
    try:
        settings = config.load(config_path).supervisor
    except ConfigError as error:
        path = _pidfile_of_broken(config_path, error)
    else:
        path = settings.pidfile
        if settings.credentials is not None:
            trusted.add(settings.credentials.uid)
    if path is None:
        raise UsageError(
            f"{config_path}: no [supervisor] pidfile is configured: pass --pidfile PATH"
        )
    return Target(path, frozenset(trusted))


def _pidfile_of_broken(config_path: str, error: ConfigError) -> str | None:
    """`supervisor reload` must still find the instance when the new file is rejected, even
    for a TOML syntax error: the pidfile as written, if it can be read there."""
    try:
        value = config.pidfile_as_written(config_path)
    except ConfigError:
        raise error from None
    if not value or "\0" in value:
        raise error
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_path)), value))


def running(target: Target) -> tuple[str, int]:
    """The pidfile (in its real directory) and the pid of the live instance that holds it.
    Nothing found there is believed unless the directory is one only trusted users can change
    (rundir.py), the pid written is that of the process holding the lock (pidfile.py), and
    that process runs as a trusted user."""
    pid_path, pid, _ = _find(target)
    return pid_path, pid


def _find(target: Target) -> tuple[str, int, frozenset[int]]:
    directory, name = os.path.split(target.pidfile)
    try:
        checked = rundir.check(directory or ".", target.trusted)
    except FileNotFoundError as exc:
        raise NotRunning(f"{target.pidfile}: supervisor is not running") from exc
    except OSError as exc:
        raise NotRunning(f"{target.pidfile}: cannot look at its directory ({exc})") from exc
    pid_path = os.path.join(checked.path, name)
    pid = pidfile.running_pid(pid_path)
    if pid is None:
        raise NotRunning(f"{pid_path}: supervisor is not running")
    # (in a directory only trusted users change, the file's owner is one of them, or one
    # root gave it to: the supervisor's user, once it has dropped root)
    trusted = checked.trusted
    with contextlib.suppress(OSError):
        trusted |= {os.stat(pid_path).st_uid}
    uid = _uid_of(pid)
    if uid is not None and uid not in trusted:
        raise pidfile.NotOurs(
            f"{pid_path}: pid {pid} runs as uid {uid}, not as a user trusted there: not believed"
        )
    return pid_path, pid, trusted


def _uid_of(pid: int) -> int | None:
    """The real uid of process `pid` (/proc), or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def ask(target: Target, command: str, timeout: float = 60.0) -> dict[str, Any]:
    """Send `command` to the instance's control socket, once its listener is known to be the
    process holding the pidfile (SO_PEERCRED), running as a trusted user."""
    pid_path, pid, trusted = _find(target)
    path = config.control_socket_for(pid_path)
    try:
        return control.request(
            path, command, timeout=timeout, expected_pid=pid, trusted_uids=trusted
        )
    except control.Impostor as exc:
        raise pidfile.NotOurs(f"{exc}: not believed") from exc
    except PermissionError as exc:
        raise NotPermitted(f"{path}: not permitted ({PERMISSION_HINT})") from exc
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        raise NotRunning(f"{path}: cannot reach the control socket ({describe(exc)})") from exc


def reload(target: Target) -> int:
    return _outcome(ask(target, "reload"), "reloaded", "reload rejected")


UPGRADE_TIMEOUT = 120.0  # seconds: the new supervisor's READY_TIMEOUT, and then some


def upgrade(target: Target) -> int:
    """Have the running supervisor hand over to the code now installed; print the outcome."""
    return _outcome(ask(target, "upgrade", UPGRADE_TIMEOUT), "upgraded", "upgrade failed")


def _outcome(answer: dict[str, Any], done: str, failed: str) -> int:
    """Print what a reload or an upgrade came to; its exit status."""
    if answer.get("ok"):
        print(f"{done}: {answer.get('message')}")
        return 0
    line = f"{failed}: {answer.get('message') or answer.get('error')}"
    print(logs.error_line(line), file=sys.stderr)
    status = answer.get("exit_status")
    return status if isinstance(status, int) and status > 0 else 1


def stop(target: Target, fast: bool, timeout: float) -> int:
    pid_path, pid = running(target)
    try:
        _signal(target, pid, signal.SIGQUIT if fast else signal.SIGTERM)
    except ProcessLookupError as exc:
        raise NotRunning(f"{pid_path}: supervisor is not running") from exc
    except PermissionError as exc:
        raise NotPermitted(f"not permitted to signal pid {pid} ({PERMISSION_HINT})") from exc
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired as exc:
        raise StillRunning(f"supervisor (pid {pid}) is still running after {timeout:g}s") from exc
    print(f"stopped supervisor (pid {pid})")
    return 0


class BadAnswer(SupervisorError):
    """The control socket answered something `status` cannot read (another version?)."""

    exit_status = os.EX_PROTOCOL


def _signal(target: Target, pid: int, signum: int) -> None:
    """Signal the instance `pid`, through a pidfd taken before it is found to hold the
    pidfile again: a pid that died and was reused in between is never signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, ProcessLookupError):
            raise
        os.kill(pid, signum)  # (no pidfds on this kernel)
        return
    try:
        if running(target)[1] != pid:
            raise ProcessLookupError(pid)
        signal.pidfd_send_signal(pidfd, signum)
    finally:
        os.close(pidfd)


def status(target: Target) -> int:
    answer = ask(target, "status")
    try:
        text = render(answer)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise BadAnswer(
            f"{target.pidfile}: the supervisor's status answer cannot be read ({describe(exc)})"
        ) from exc
    print(text)
    return 0


def render(state: dict[str, Any]) -> str:
    """The status answer as a table per server and a process tree."""
    now = time.time()
    lines = [
        f"supervisor: {state['state']}, pid {state['pid']}, up {_age(now - state['started'])}, "
        f"config {state['config']}",
        f"last reload: {_last_reload(state.get('last_reload'))}",
        "",
    ]
    rows = [("SERVER", "ADDRESS", "MODE", "CHILDREN", "REQUESTS", "ERRORS", "REJECTED")]
    for server in state["servers"]:
        name = server["name"] + (" (removed)" if server["removed"] else "")
        children = f"{server['active']}/{server['max_children']}"
        if server["mode"] == "inline":
            children = "-"
        rows.append(
            (
                name,
                server["address"],
                server["mode"],
                children,
                str(server["requests"]),
                str(server["errors"]),
                str(server.get("rejected", 0)),  # (a supervisor from before the guards)
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines += ["", *_process_tree(state, now)]
    return "\n".join(lines)


def _last_reload(last: dict[str, Any] | None) -> str:
    if last is None:
        return "none"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["at"]))
    return f"{'ok' if last['ok'] else 'FAILED'} at {when}: {last['message']}"


def _process_tree(state: dict[str, Any], now: float) -> list[str]:
    lines = [f"{state['pid']}  supervisor  up {_age(now - state['started'])}"]
    for child in state["children"]:
        try:
            age = _age(now - psutil.Process(child["pid"]).create_time())
        except psutil.Error:
            age = "exited"
        lines.append(f"  {child['pid']}  {child['server']}  up {age}")
    return lines


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"

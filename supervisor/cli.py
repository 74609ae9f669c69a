"""The `supervisor` command: `run`, `check`, `reload`, `upgrade`, `stop`, `status`, `health`.

Every user mistake ends as one line on stderr and a sysexits status (see errors.py); only a bug
in the supervisor itself prints a traceback.

Imports are per command (hence the PLC0415 exceptions): `health` runs every half minute in a
container and should cost a fraction of a `run`, and `run` must reach `signals.defer()` as soon
as it can: as PID 1, a SIGTERM that arrives before that is lost.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from supervisor import __version__, logs, signals
from supervisor.errors import SupervisorError, UsageError

CONFIG_ENV = "SUPERVISOR_CONFIG"
DEFAULT_STOP_TIMEOUT = 60.0  # `stop` without a configuration to derive it from


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


def example_config() -> str:
    """The bundled example configuration, so a fresh install serves something real. Its real
    path (in the source tree, etc/supervisor.toml, which supervisor/example.toml links to):
    its relative paths (run/) must mean the same as with `-c etc/supervisor.toml`."""
    import importlib.resources  # noqa: PLC0415

    return os.path.realpath(str(importlib.resources.files("supervisor") / "example.toml"))


def default_config() -> str:
    """`$SUPERVISOR_CONFIG` when set (a container image points it at its file), else the example."""
    return os.environ.get(CONFIG_ENV) or example_config()


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="supervisor",
        description="Host many socketserver servers in one process.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for name, text in (
        ("run", "run the servers until SIGTERM or SIGINT (in the foreground by default)"),
        ("check", "validate the configuration and import its handlers"),
        ("reload", "make the running supervisor reload its configuration; wait for the outcome"),
        ("upgrade", "hand the running supervisor's sockets to the code now installed; wait"),
        ("stop", "stop the running supervisor and wait until it has exited"),
        ("status", "show the running supervisor's servers and processes"),
        ("health", "ask the running supervisor's /healthz; exit 0 if healthy, 1 if not"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help=f"the configuration file (default: ${CONFIG_ENV}, else the bundled example)",
        )
        if name in ("reload", "upgrade", "stop", "status"):
            command.add_argument(
                "--pidfile", metavar="PATH", help="the pidfile (default: the configuration's)"
            )
    commands.choices["run"].add_argument(
        "--daemon", action="store_true", help="detach (needs [supervisor] pidfile and log_file)"
    )
    stop = commands.choices["stop"]
    stop.add_argument(
        "--fast", action="store_true", help="terminate running requests at once (SIGQUIT)"
    )
    stop.add_argument(
        "--timeout", type=seconds, metavar="SECONDS", help="how long to wait for the exit"
    )
    commands.choices["check"].add_argument(
        "--preflight",
        action="store_true",
        help=argparse.SUPPRESS,  # (an upgrade in place's)
    )
    commands.choices["health"].add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="how long to wait for the answer, in all (default: 5)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    signals.defer()  # held for `run` until its loop takes them; released at once otherwise
    try:
        args = _parser().parse_args(argv)
        if args.command != "run":
            signals.release()
        return _dispatch(args)
    except SupervisorError as exc:
        print(logs.error_line(str(exc)), file=sys.stderr)
        return exc.exit_status
    except BrokenPipeError:
        # `supervisor status | head -3`: whoever reads stopped; no traceback. stdout goes to
        # /dev/null, or Python's own flush at exit would fail the same way.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    path = args.config or default_config()
    if args.command == "check":
        return check(path, preflight=args.preflight)
    if args.command == "run":
        from supervisor import daemon  # noqa: PLC0415

        return daemon.run(path, detach=args.daemon)
    if args.command == "health":
        from supervisor import health  # noqa: PLC0415

        return health.run(path, args.timeout or health.DEFAULT_TIMEOUT)
    return _control(args, path)


def _control(args: argparse.Namespace, path: str) -> int:
    from supervisor import commands  # noqa: PLC0415

    target = commands.find_pidfile(path, args.pidfile)
    if args.command == "reload":
        return commands.reload(target)
    if args.command == "upgrade":
        return commands.upgrade(target)
    if args.command == "status":
        return commands.status(target)
    timeout = args.timeout or _stop_timeout(args.config or os.environ.get(CONFIG_ENV))
    return commands.stop(target, args.fast, timeout)


def seconds(text: str) -> float:
    """A positive number of seconds (argparse names the type after this function)."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError(text)  # argparse reports it as an invalid value
    return value


def _stop_timeout(path: str | None) -> float:
    """Long enough for a graceful stop under the given configuration."""
    if path is None:
        return DEFAULT_STOP_TIMEOUT
    from supervisor import config  # noqa: PLC0415

    try:
        settings = config.load(path).supervisor
    except SupervisorError:
        return DEFAULT_STOP_TIMEOUT
    return settings.shutdown_timeout + 2 * settings.kill_grace + 5


def check(path: str, preflight: bool = False) -> int:
    """What `run` checks before it binds anything, as this user: the file, the privileges it
    asks for (see privileges.check), the handlers. `preflight`: for an upgrade in place
    (upgrade.py), what the new code would meet taking over from a running supervisor, which
    has its sockets and privileges already: every module `run` imports, the file, the
    handlers."""
    from supervisor import config, hosting, privileges, rundir  # noqa: PLC0415
    from supervisor.config import Mode  # noqa: PLC0415

    loaded = config.load(path)
    if preflight:
        from supervisor import daemon  # noqa: F401, PLC0415
    else:
        privileges.check(loaded, starting=True)
        rundir.secure_pidfile(loaded, create=False)
    codes = hosting.load_all(loaded)  # (the server objects too, adopted at their addresses)
    try:
        hosting.adopt_all(loaded, codes, {})
    finally:
        hosting.close_made(codes)
    for server in loaded.servers.values():
        limits = [] if server.mode is Mode.INLINE else [f"max_children={server.max_children}"]
        if server.mode is Mode.PREFORK:
            limits.insert(0, f"workers={server.workers}")
        if server.address.is_stream:
            limits.append(f"backlog={server.backlog}")
        else:
            limits.append(f"max_packet_size={server.max_packet_size}")
        if server.reuse_port:
            limits.append("reuse_port")
        code = server.code if server.handler else f"server={server.server}"
        fields = [server.name, str(server.address), code, server.mode, *limits]
        print("  ".join(fields))
    print(f"{path}: ok, {len(loaded.servers)} servers")
    return 0

"""The `supervisor` command: `run` and `check`.

Every user mistake ends as one line on stderr and a sysexits status (see errors.py); only a bug
in the supervisor itself prints a traceback.
"""

import argparse
import importlib.resources
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from supervisor import __version__, config, handlers
from supervisor.config import Mode
from supervisor.core import Supervisor
from supervisor.errors import BindError, SupervisorError, UsageError
from supervisor.sockets import Listener, bind

LOG_FORMAT = "%(asctime)s %(levelname)s supervisor[%(process)d]: %(message)s"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


def example_config() -> str:
    """The bundled example configuration, so a fresh install serves something real."""
    return str(importlib.resources.files("supervisor") / "example.toml")


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
        ("run", "run the servers in the foreground until SIGTERM or SIGINT"),
        ("check", "validate the configuration and import its handlers"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="the configuration file (default: the bundled example)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        path = args.config or example_config()
        if args.command == "check":
            return check(path)
        return run(path)
    except SupervisorError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_status


def check(path: str) -> int:
    loaded = config.load(path)
    handlers.import_all(loaded)
    for server in loaded.servers.values():
        limits = [] if server.mode is Mode.INLINE else [f"max_children={server.max_children}"]
        if server.address.is_stream:
            limits.append(f"backlog={server.backlog}")
        else:
            limits.append(f"max_packet_size={server.max_packet_size}")
        fields = [server.name, str(server.address), server.handler, server.mode, *limits]
        print("  ".join(fields))
    print(f"{path}: ok, {len(loaded.servers)} servers")
    return 0


def run(path: str) -> int:
    loaded = config.load(path)
    classes = handlers.import_all(loaded)
    logging.basicConfig(
        level=loaded.supervisor.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr
    )
    listeners = bind_all(loaded)
    return Supervisor(loaded, classes, listeners).run()


def bind_all(loaded: config.Config) -> dict[str, Listener]:
    """Bind every server; on the first failure close what was bound and raise BindError."""
    listeners: dict[str, Listener] = {}
    for name, server in loaded.servers.items():
        try:
            listeners[name] = bind(server.address, server.backlog)
        except OSError as exc:
            for listener in listeners.values():
                listener.close()
            reason = exc.strerror or str(exc)
            raise BindError(
                f"{loaded.source}: servers.{name}: cannot bind {server.address} ({reason})"
            ) from exc
    return listeners

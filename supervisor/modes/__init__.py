"""The modes a server's requests can run in, one module each (base.py says what a mode is).

Adding a mode: a module with a `Mode` subclass, a value in config.Mode, and a line in MODES.
"""

from collections.abc import Iterable, Iterator

from supervisor.config import Mode as Name
from supervisor.modes.base import Host, Mode
from supervisor.modes.fork import Fork
from supervisor.modes.inline import Inline
from supervisor.modes.prefork import Prefork
from supervisor.modes.thread import Threads
from supervisor.server import Server

MODES: dict[Name, type[Mode]] = {
    Name.INLINE: Inline,
    Name.THREAD: Threads,
    Name.FORK: Fork,
    Name.PREFORK: Prefork,
}


class Modes(dict[Name, Mode]):
    """One instance of every mode, for a supervisor: by name (a dict: looked up per request),
    or all in turn."""

    def __init__(self, host: Host) -> None:
        super().__init__((name, mode(host)) for name, mode in MODES.items())

    def __iter__(self) -> Iterator[Mode]:  # type: ignore[override]  # (the modes, not names)
        return iter(self.values())

    def start(self, servers: Iterable[Server]) -> None:
        """Tell each mode which servers are its now (at start, and after a reload)."""
        mine: dict[Name, list[Server]] = {name: [] for name in self.keys()}
        for server in servers:
            mine[server.mode].append(server)
        for name, mode in self.items():
            mode.start(mine[name])

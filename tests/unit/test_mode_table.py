"""The table of modes: every configurable mode has its module, and each keeps to the interface."""

from supervisor.children import ChildTable
from supervisor.config import Mode as Name
from supervisor.loop import Loop
from supervisor.modes import MODES, Modes
from supervisor.modes.base import Mode
from supervisor.server import Server
from supervisor.spawn import Spawner


def test_every_mode_the_configuration_accepts_has_a_class() -> None:
    assert set(MODES) == set(Name)
    assert all(issubclass(mode, Mode) for mode in MODES.values())


def test_only_modes_that_accept_in_the_supervisor_take_requests() -> None:
    # A mode whose requests the supervisor accepts must say how it runs them.
    for name, mode in MODES.items():
        overrides_take = mode.take is not Mode.take
        assert overrides_take == mode.listens, name


class Host:
    """Just enough of modes.base.Host for the modes' constructors."""

    def __init__(self) -> None:
        self.loop = Loop()
        self.children: ChildTable[Server] = ChildTable()
        self.spawner = Spawner(self.children, list)


def test_a_supervisor_has_one_instance_of_each_mode() -> None:
    host = Host()
    modes = Modes(host)  # type: ignore[arg-type]  # (no settings: not asked before start)
    try:
        assert [type(mode) for mode in modes] == list(MODES.values())
        assert all(type(modes[name]) is MODES[name] for name in Name)
    finally:
        for mode in modes:
            mode.close()
        host.loop.close()

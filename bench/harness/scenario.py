"""What a scenario is, and what it works with.

A scenario is a title, a function that returns its section (text lines) and its targets, and,
for the throughput scenarios (1-4, 9), the cells it wants loaded in the shared interleaved rounds
(bench/harness/rounds.py), measured before any scenario's section is made.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness.load import Sample
from bench.harness.pool import Pool
from bench.harness.processes import Processes
from bench.harness.report import Target
from bench.harness.rounds import Cell
from bench.harness.settings import Settings

Section = tuple[list[str], list[Target]]  # the lines under the title, and the targets


@dataclass(frozen=True)
class Context:
    """What a scenario works with."""

    pool: Pool
    procs: Processes
    workdir: Path
    samples: dict[Cell, list[Sample]]
    config: Settings


@dataclass(frozen=True)
class Scenario:
    """A scenario: its title, what makes its section, and the cells it has loaded (1-4, 9)."""

    title: str
    run: Callable[[Context], Section]
    cells: Callable[[Settings], list[Cell]] | None = None  # throughput: loaded in the rounds

    @property
    def throughput(self) -> bool:
        return self.cells is not None

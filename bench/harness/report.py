"""The report: plain-text tables, the targets and the run's text.

Nothing here asserts a time: the targets are reported (PASS, MISS, or n/a when there is
nothing to compare), never enforced. The run's text is printed as it comes and written at the
end, whole (a .tmp file renamed), like every file the harness writes for another to read.
"""

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, 100)


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """A plain-text table: the first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        cells = [
            str(cell).ljust(width) if index < left else str(cell).rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(headers), line(["-" * width for width in widths]), *map(line, rows)]


@dataclass(frozen=True)
class Target:
    """A measured value against its goal: ok is None when there is nothing to judge."""

    what: str
    value: float | None
    goal: str
    ok: bool | None
    shown: str = ""


def at_least(what: str, value: float | None, goal: float, unit: str = "x") -> Target:
    shown = fmt(value, ".2f") + (unit if value is not None else "")
    return Target(
        what, value, f">= {goal:g}{unit}", None if value is None else value >= goal, shown
    )


def at_most(what: str, value: float | None, goal: float, unit: str = "x") -> Target:
    shown = fmt(value, ".2f") + (unit if value is not None else "")
    return Target(
        what, value, f"<= {goal:g}{unit}", None if value is None else value <= goal, shown
    )


def below_ms(what: str, seconds: float | None, limit_ms: float, digits: int = 1) -> Target:
    """A time in seconds against a limit in milliseconds."""
    return Target(
        what,
        seconds,
        f"< {limit_ms:g} ms",
        None if seconds is None else seconds * 1e3 < limit_ms,
        fmt(seconds, f".{digits}f", 1e3) + " ms",
    )


def within_ms(what: str, seconds: float | None, limit_ms: float, digits: int = 1) -> Target:
    """A time in seconds against a limit in milliseconds, the limit itself allowed."""
    return Target(
        what,
        seconds,
        f"<= {limit_ms:g} ms",
        None if seconds is None else seconds * 1e3 <= limit_ms,
        "-" if seconds is None else f"{seconds * 1e3:.{digits}f} ms",
    )


def info(what: str, value: float | None) -> Target:
    """A ratio shown for information, with no goal."""
    return Target(what, value, "(info)", None, fmt(value, ".2f") + "x")


def targets_table(targets: Sequence[Target]) -> list[str]:
    rows = [
        [
            target.what,
            target.shown or fmt(target.value, ".2f"),
            target.goal,
            "n/a" if target.ok is None else "PASS" if target.ok else "MISS",
        ]
        for target in targets
    ]
    return render(["target", "measured", "goal", "result"], rows)


@dataclass
class Output:
    """The run's text: each section printed as it comes, all of it kept to be written."""

    lines: list[str] = field(default_factory=list)

    def emit(self, section: Sequence[str]) -> None:
        print("\n".join(section), flush=True)
        self.lines.extend(section)


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)

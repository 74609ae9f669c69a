"""The run's settings: rounds, seconds per load, concurrencies and the scenarios' sizes.

`--quick` is 1 round of 1 s at concurrency 8; the full run 5 rounds of 3 s at 8 and 64.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """What `--quick`, `--rounds` and `--seconds` chose."""

    quick: bool
    rounds: int
    seconds: float
    warmup: float  # seconds; wrk -d takes whole seconds, 1 at least
    concurrencies: tuple[int, ...]
    many_sizes: tuple[int, ...]
    idle_seconds: float
    reloads: int
    scrapes: int
    upgrades: int  # scenario 10's, per variant (spawned, in place)


def settings(quick: bool, rounds: int | None, seconds: float | None) -> Settings:
    if quick:
        base = Settings(True, 1, 1.0, 1.0, (8,), (1, 100, 1000), 3.0, 5, 10, 3)
    else:
        base = Settings(False, 5, 3.0, 1.0, (8, 64), (1, 100, 1000), 10.0, 20, 50, 10)
    return Settings(
        base.quick,
        rounds or base.rounds,
        seconds or base.seconds,
        base.warmup,
        base.concurrencies,
        base.many_sizes,
        base.idle_seconds,
        base.reloads,
        base.scrapes,
        base.upgrades,
    )

"""The scenarios of bench/compare.py, one module each, by number (`--only` picks them).

The throughput scenarios (1-4 and 9) name the cells they want loaded: all the selected ones are
measured together in interleaved rounds before their tables are made. Scenarios 5-8 and 10 run
alone, in turn.
"""

from collections.abc import Mapping

from bench.harness.scenario import Scenario
from bench.scenarios import (
    fork,
    hosted,
    isolation,
    many_servers,
    memory,
    prefork,
    reload,
    scrape,
    thread_inline,
    upgrade,
)

SCENARIOS: Mapping[int, Scenario] = {
    1: fork.SCENARIO,
    2: prefork.SCENARIO,
    3: thread_inline.SCENARIO,
    4: many_servers.SCENARIO,
    5: isolation.SCENARIO,
    6: reload.SCENARIO,
    7: memory.SCENARIO,
    8: scrape.SCENARIO,
    9: hosted.SCENARIO,
    10: upgrade.SCENARIO,
}

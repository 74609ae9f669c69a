"""The harness of bench/compare.py, shared by its scenarios (bench/scenarios/).

- places: where the repository, this Python and its `supervisor` command are.
- machine: the tools installed, the C contenders compiled, the machine described.
- processes: every process started in its own session, its output read, its group killed.
- network: the exchange every contender serves, and free ports.
- load: a bounded wrk load, and what is measured around it; the fork floor.
- roundtrips: round trips timed one by one (bench/c/rtt.c), and what is made of them.
- scrapes: a scrape of /metrics as a client sees it: timed, decoded, checked.
- contenders, supervisors, pool: the contenders, started on first use and kept for the run.
- settings: the run's rounds, seconds and sizes.
- rounds: the throughput loads interleaved over rounds, and their ratios of pairs.
- report: plain-text tables and the targets, reported as PASS/MISS, never enforced.
- scenario: what a scenario is and what it works with.
"""

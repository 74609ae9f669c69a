"""The supervisor against its peers: one command, every contender, interleaved rounds.

Run from the repository root:  .venv/bin/python bench/compare.py [--quick] [--only 1,4,...]

It installs the Debian packages it needs when they are missing and it runs as root (wrk,
xinetd, ucspi-tcp, gcc), compiles the C contenders (bench/c/) into a temporary directory,
starts every contender once, runs each scenario's loads interleaved across the contenders
(A B C A B C ... for several rounds), prints one table per scenario (medians, ratios to the
peers measured in the same rounds, PASS/MISS against the issue's targets) and writes the same
text, with the machine it ran on, to bench/results/compare.txt.

This is the entry point: the options, the header and the order of the run. The harness is
bench/harness/ (contenders, loads, rounds, report) and each scenario is a module of
bench/scenarios/.
"""

import argparse
import platform
import re
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness.load import Sample
from bench.harness.machine import (
    compile_c,
    cpu_line,
    ensure_tools,
    more_files,
    utc_now,
    version_of,
)
from bench.harness.places import BENCH
from bench.harness.pool import Pool
from bench.harness.processes import Processes
from bench.harness.report import Output, targets_table, write_atomically
from bench.harness.rounds import Cell, notes_for_matrix, run_matrix, unique_cells
from bench.harness.scenario import Context, Scenario
from bench.harness.settings import Settings, settings
from bench.scenarios import SCENARIOS

RESULTS = BENCH / "results" / "compare.txt"


def header(config: Settings, selected: Sequence[int]) -> list[str]:
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    mode = "--quick" if config.quick else "full"
    return [
        "bench/compare.py: the supervisor against its peers, new TCP connection per request",
        f"date:      {utc_now()}  ({mode}; scenarios {','.join(map(str, selected))}; "
        f"{config.rounds} round(s) of {config.seconds:g} s)",
        cpu_line(),
        f"kernel:    {platform.system()} {platform.release()} ({platform.machine()}); "
        f"net.core.somaxconn {somaxconn}",
        f"python:    {sys.version.split()[0]} ({platform.python_implementation()})",
        f"tools:     {version_of(['wrk', '-v'])}; {version_of(['gcc', '--version'])}",
        "",
    ]


def run_scenario(scenario: Scenario, context: Context, output: Output) -> None:
    """One scenario's section: its title, its lines, its targets."""
    print(f"{scenario.title} ...", flush=True)
    started = time.perf_counter()
    section, targets = scenario.run(context)
    if scenario.throughput:
        section = [*notes_for_matrix(context.config), *section]
    output.emit(
        [
            "=" * 100,
            scenario.title,
            "=" * 100,
            *section,
            "",
            *(targets_table(targets) if targets else []),
            "" if scenario.throughput else f"({time.perf_counter() - started:.1f} s)",
            "",
        ]
    )


def run_scenarios(
    selected: Sequence[int], procs: Processes, pool: Pool, config: Settings, output: Output
) -> None:
    """The throughput rounds of the selected scenarios 1-4 and 9, then every selected
    section."""
    scenarios = [SCENARIOS[number] for number in selected]
    cells = unique_cells(
        cell for scenario in scenarios if scenario.cells for cell in scenario.cells(config)
    )
    samples: dict[Cell, list[Sample]] = {}
    if cells:
        throughput = [str(number) for number in selected if SCENARIOS[number].throughput]
        print(f"Throughput scenarios {','.join(throughput)}: starting the contenders", flush=True)
        samples = run_matrix(pool, cells, config)
    context = Context(pool, procs, pool.workdir, samples, config)
    for scenario in scenarios:
        run_scenario(scenario, context, output)


def run(selected: Sequence[int], config: Settings) -> Output:
    output = Output()
    output.emit(header(config, selected))
    missing = ensure_tools()
    if "wrk" in missing:
        output.emit(["wrk is not installed and could not be installed: nothing to measure"])
        return output
    if missing:
        output.emit([f"missing (their contenders are unavailable): {', '.join(missing)}", ""])
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as directory:
        workdir = Path(directory)
        build = workdir / "build"
        build.mkdir()
        failure = compile_c(build)
        if failure:
            output.emit([f"C contenders unavailable: {failure}", ""])
        pool = Pool(procs, workdir, None if failure else build)
        try:
            run_scenarios(selected, procs, pool, config, output)
        finally:
            procs.stop_all()
    return output


def parse_only(text: str) -> list[int]:
    numbers = sorted({int(part) for part in re.split(r"[,\s]+", text.strip()) if part})
    if not numbers or any(number not in SCENARIOS for number in numbers):
        raise argparse.ArgumentTypeError(f"scenarios are 1-{len(SCENARIOS)}, got {text!r}")
    return numbers


def write_results(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s, concurrency 8")
    parser.add_argument("--only", type=parse_only, default=list(SCENARIOS), help="e.g. 1,3,5")
    parser.add_argument("--rounds", type=int, help="rounds per contender (default 5, quick 1)")
    parser.add_argument("--seconds", type=int, help="whole seconds per load (default 3, quick 1)")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="the file written (default bench/results/compare.txt; another for a partial run)",
    )
    arguments = parser.parse_args()
    # SIGTERM (timeout, kill) ends the run like Ctrl-C: through the finally blocks that stop
    # every contender, not leaving them behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    config = settings(arguments.quick, arguments.rounds, arguments.seconds)
    started = time.perf_counter()
    with more_files():
        output = run(arguments.only, config)
    output.emit([f"(whole run: {time.perf_counter() - started:.0f} s)"])
    write_results("\n".join(output.lines) + "\n", arguments.results)
    print(f"written to {arguments.results}")


if __name__ == "__main__":
    main()

"""What a file, a client or a local user sends never takes the supervisor down (issue 13).

The hostile corpus (tests/hostile/corpus.py), each file in turn: `run` refuses it with one line
and exit 78, and a running supervisor reloaded with it keeps its configuration and serving; a
control-socket line that breaks JSON's parser gets an error answer from a live supervisor.
"""

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from supervisor import errors
from tests.configs import METRICS_ANY_PORT
from tests.conftest import StartSupervisor, exchange, one_line_error, run_cli
from tests.hostile.corpus import CORPUS, PROBE

RUN_TIMEOUT = 30.0


def test_run_refuses_each_hostile_file_in_one_bounded_line(tmp_path: Path) -> None:
    def run(name: str) -> tuple[str, subprocess.CompletedProcess[str], Path]:
        directory = tmp_path / str(list(CORPUS).index(name))
        directory.mkdir()
        path = directory / "supervisor.toml"
        path.write_text(CORPUS[name][0] + METRICS_ANY_PORT)
        return name, run_cli("run", "-c", str(path), timeout=RUN_TIMEOUT), path

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, CORPUS))
    for name, result, path in results:
        line = one_line_error(result, os.EX_CONFIG)  # (no traceback, nothing on stdout)
        assert len(line) <= errors.MAX_LINE, name
        assert line.startswith(f"{path}: "), name
        assert CORPUS[name][1] in line, name


def test_a_reload_with_each_hostile_file_keeps_the_old_configuration(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor('[supervisor]\npidfile = "run/supervisor.pid"\n' + PROBE)
    probe = supervisor.inet("probe")
    pidfile = supervisor.config.parent / "run" / "supervisor.pid"
    for name, (text, mentions) in CORPUS.items():
        supervisor.config.write_text(text + METRICS_ANY_PORT)
        result = run_cli("reload", "--pidfile", str(pidfile))
        assert result.returncode == os.EX_CONFIG, (name, result.stderr)
        assert result.stderr.startswith(f"reload rejected: {supervisor.config}: "), name
        assert result.stderr.count("\n") == 1, name
        assert mentions in result.stderr, name
        assert exchange(probe, b"still there\n") == b"%s still there\n" % repr(probe).encode()
    assert supervisor.running()
    assert "Traceback" not in supervisor.log
    assert "internal error" not in supervisor.log


@pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")
def test_a_control_line_too_deep_for_json_is_a_bad_request(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor('[supervisor]\npidfile = "run/supervisor.pid"\n' + PROBE)
    control = supervisor.config.parent / "run" / "supervisor.sock"
    answer = subprocess.run(
        ["socat", "-t", "10", "-", f"UNIX-CONNECT:{control}"],
        input="[" * 1000 + "\n",
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    assert answer.stdout.count("\n") == 1
    assert json.loads(answer.stdout) == {
        "ok": False,
        "error": 'bad request: expected {"command": NAME}',
    }
    status = run_cli("status", "--pidfile", str(control.with_suffix(".pid")))
    assert status.returncode == 0, status.stderr
    assert "probe" in status.stdout
    assert "Traceback" not in supervisor.log

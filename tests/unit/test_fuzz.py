"""`supervisor check` fuzzed (Hypothesis, fixed seed): whatever the file holds, it answers with
exit 0 and its summary, or with exactly one bounded line and a sysexits status; never a
traceback. The same invariant for run and reload is in tests/integration/test_fuzz.py."""

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given

from supervisor import cli, errors
from tests.hostile.strategies import SUPERVISOR_LIMITS, SUPERVISOR_PATHS, fuzz, garbled, mutated

BASE = {
    "supervisor": {"pidfile": "run/supervisor.pid", "allow_root": True},
    "servers": {
        "fuzz": {"address": "tcp://127.0.0.1:0", "handler": "tests.handlers:LineEchoHandler"},
        "other": {"address": "unix://run/other.sock", "handler": "tests.handlers:LineEchoHandler"},
    },
    "metrics": {"address": "tcp://127.0.0.1:0"},
}
FAILURES = {os.EX_CONFIG, os.EX_OSERR, os.EX_NOPERM}


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """check imports handlers and extends sys.path: undo both after each example."""
    path, modules = list(sys.path), dict(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in [name for name in sys.modules if name not in modules]:
            del sys.modules[name]


def assert_answers_properly(path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    with isolated(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["check", "-c", str(path)])
    stderr = err.getvalue()
    assert "Traceback" not in stderr
    if status == 0:
        assert stderr == ""
        assert out.getvalue().endswith(" servers\n")
        return
    assert status in FAILURES, stderr
    assert out.getvalue() == ""
    assert stderr.endswith("\n")
    assert stderr.count("\n") == 1, stderr
    assert len(stderr) <= errors.MAX_LINE + 1


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SUPERVISOR_ALLOW_ROOT", raising=False)  # (allow_root decides)
    return tmp_path / "supervisor.toml"


@fuzz(250)
@given(text=mutated(BASE, [*SUPERVISOR_LIMITS, *SUPERVISOR_PATHS]))
def test_check_answers_any_file_in_one_line(config_path: Path, text: str) -> None:
    config_path.write_text(text)
    assert_answers_properly(config_path)


@fuzz(250)
@given(text=garbled(tomli_w.dumps(BASE)))
def test_check_answers_a_garbled_file_in_one_line(config_path: Path, text: str) -> None:
    config_path.write_text(text, errors="surrogatepass")
    assert_answers_properly(config_path)

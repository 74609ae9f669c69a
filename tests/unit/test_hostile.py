"""`supervisor check` on the hostile corpus (tests/hostile/corpus.py), in-process: every file is
refused with exit 78 and exactly one bounded line naming the problem, never a traceback; and
the helpers that keep every error line bounded."""

import contextlib
import io
import os
from pathlib import Path

import pytest

from supervisor import cli, errors
from supervisor.errors import ConfigError
from tests.hostile.corpus import CORPUS

LONGEST = errors.MAX_LINE


def check(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["check", "-c", str(path)])
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", list(CORPUS))
def test_check_refuses_each_hostile_file_in_one_bounded_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERVISOR_ALLOW_ROOT", "1")  # (the refusal of root is not the point)
    text, mentions = CORPUS[name]
    path = tmp_path / "supervisor.toml"
    path.write_text(text)
    status, out, err = check(path)
    assert (status, out) == (os.EX_CONFIG, ""), err
    assert err.endswith("\n")
    assert err.count("\n") == 1, err[:1000]
    assert len(err) <= LONGEST + 1, err
    assert err.startswith(f"{path}: ")
    assert mentions in err


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (os.mkfifo, "not a regular file (a FIFO)"),  # open() would wait for a writer
        (lambda path: path.mkdir(), "not a regular file (a directory)"),
        (lambda path: path.symlink_to("/dev/zero"), "not a regular file (a character device)"),
        (lambda path: path.write_bytes(b"#" * (4 * 2**20 + 1)), "larger than 4 MiB"),
        (
            lambda path: path.write_bytes(b"\xff\xfe"),
            "not UTF-8 text (invalid start byte at byte 0)",
        ),
    ],
    ids=["fifo", "directory", "dev-zero", "too-large", "not-utf8"],
)
def test_check_reads_only_a_bounded_regular_file(make: object, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "supervisor.toml"
    make(path)  # type: ignore[operator]
    assert check(path) == (os.EX_CONFIG, "", f"{path}: {reason}\n")


def test_one_line_keeps_both_ends_of_a_long_message() -> None:
    text = "where: " + "x\n" * 1_000_000 + "(the reason)"
    line = errors.one_line(text)
    assert len(line) == LONGEST
    assert line.startswith("where: x x")
    assert line.endswith("x (the reason)")
    assert "..." in line
    assert "\n" not in line


def test_shown_quotes_any_value_briefly() -> None:
    assert errors.shown(int("f" * 4000, 16)) == "an integer of 16000 bits"
    assert errors.shown(-(10**50)) == "an integer of 167 bits"
    assert errors.shown(12345) == "12345"
    assert errors.shown(True) == "True"
    assert errors.shown("a\0b") == "'a\\x00b'"
    assert len(errors.shown("y" * 10**6)) <= errors.MAX_VALUE + 2
    deep: list[object] = []
    for _ in range(10_000):
        deep = [deep]
    assert errors.shown(deep) == "[[[...]]]"
    assert errors.shown([int("9" * 100)]) == "[an integer of 333 bits]"


def test_describe_survives_an_exception_whose_str_raises() -> None:
    class Hostile(Exception):
        def __str__(self) -> str:
            raise KeyboardInterrupt

    assert errors.describe(Hostile()) == "Hostile: <its message cannot be shown>"
    assert errors.describe(ValueError("two\nlines")) == "ValueError: two lines"
    assert len(errors.describe(ValueError("z" * 10**6))) == LONGEST // 2


def test_every_error_line_is_bounded() -> None:
    error = ConfigError("f" * 5000, "servers." + "n" * 5000, "w" * 5000)
    assert len(str(error)) == LONGEST

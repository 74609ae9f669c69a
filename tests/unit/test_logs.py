"""logs.JsonFormatter and logs.RequestFields: one JSON object per record, on one line, whatever
the message, the traceback or the extra fields hold; the request's server and client added to
the lines logged while it is handled."""

import json
import logging
import re
import sys
from typing import Any

import pytest

from supervisor import handling, logs


def record(
    message: str = "hello",
    *args: object,
    level: int = logging.INFO,
    exc_info: Any = None,
    **extra: object,
) -> logging.LogRecord:
    return logging.getLogger("tests.unit").makeRecord(
        "tests.unit", level, __file__, 1, message, args, exc_info, extra=extra
    )


def line_of(made: logging.LogRecord, journal: bool = False) -> str:
    line = logs.JsonFormatter(journal).format(made)
    assert "\n" not in line, line
    assert line.isascii(), line
    return line


def fields_of(made: logging.LogRecord) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(line_of(made))
    return decoded


def test_the_fields_every_line_has() -> None:
    made = record("%s: listening on %s", "echo", "tcp://127.0.0.1:7007", level=logging.WARNING)
    made.created, made.msecs = 1764979200.25, 250.0  # 2025-12-06 00:00:00.250 UTC
    assert fields_of(made) == {
        "time": "2025-12-06T00:00:00.250Z",
        "level": "warning",
        "logger": "tests.unit",
        "message": "echo: listening on tcp://127.0.0.1:7007",
        "pid": made.process,
    }


def test_server_and_client_as_strings() -> None:
    assert fields_of(record(server="echo", client=("127.0.0.1", 40000)))["client"] == (
        "127.0.0.1:40000"
    )
    assert fields_of(record(server="echo", client=("::1", 5, 0, 0)))["client"] == "[::1]:5"
    assert fields_of(record(server="echo", client=""))["client"] == ""  # an unnamed unix peer
    assert fields_of(record(server="echo", client=b"\0abstract"))["client"] == "\0abstract"
    assert fields_of(record(server="echo"))["server"] == "echo"
    assert "client" not in fields_of(record(server="echo"))


def test_a_traceback_is_a_field_of_the_one_line() -> None:
    try:
        _fail()
    except RuntimeError:
        made = record("%s: handler failed", "echo", level=logging.ERROR, exc_info=sys.exc_info())
    fields = fields_of(made)
    assert fields["level"] == "error"
    assert fields["exc_info"].startswith("Traceback (most recent call last):\n")
    assert fields["exc_info"].endswith("RuntimeError: on purpose")


def _fail() -> None:
    raise RuntimeError("on purpose")


def test_stack_info_too() -> None:
    made = logging.getLogger("tests.unit").makeRecord(
        "tests.unit", logging.INFO, __file__, 1, "here", (), None, sinfo="Stack (most recent):\n  x"
    )
    assert fields_of(made)["stack_info"] == "Stack (most recent):\n  x"


@pytest.mark.parametrize(
    "text", ["w\u00f6rld \u2603", "nul\0byte", "line\nbreak\r\u2028\u2029\x85", '"quoted" \\']
)
def test_any_message_stays_one_ascii_line(text: str) -> None:
    assert fields_of(record("%s", text))["message"] == text
    assert fields_of(record(text))["message"] == text


def test_extra_fields_follow_and_anything_becomes_text() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    class Broken:
        def __str__(self) -> str:
            raise ValueError("no")

    fields = fields_of(record(request_id=7, user="\u00e9", odd=Odd(), broken=Broken()))
    assert (fields["request_id"], fields["user"], fields["odd"]) == (7, "\u00e9", "odd")
    assert fields["broken"] == "<Broken object>"
    cyclic: list[object] = []
    cyclic.append(cyclic)
    assert fields_of(record(keys={(1, 2): 3}, cyclic=cyclic))["keys"] == "{(1, 2): 3}"
    assert fields_of(record(level_of_user="x", _private=1)).keys() >= {"level_of_user"}
    assert "_private" not in fields_of(record(_private=1))


def test_values_strict_json_has_no_place_for_become_text() -> None:
    """NaN (which json.dumps writes bare by default, and strict parsers refuse) and a
    structure deeper than the encoder's recursion limit."""

    def strict(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    deep: list[object] = []
    for _ in range(sys.getrecursionlimit() + 10):
        deep = [deep]
    nan = json.loads(line_of(record(ratio=float("nan"))), parse_constant=strict)
    assert nan["ratio"] == "nan"
    fields = json.loads(line_of(record(deep=deep)), parse_constant=strict)
    assert fields["deep"] == "<list object>"  # (even its str() is too deep)


def test_a_message_its_arguments_do_not_fit_is_still_a_line() -> None:
    message = fields_of(record("%d items", "many"))["message"]
    assert message.startswith("'%d items' % ('many',) (TypeError: "), message


def test_the_journal_gets_the_priority_first() -> None:
    line = line_of(record(level=logging.ERROR), journal=True)
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["level"] == "error"
    assert line_of(record(level=logging.INFO), journal=True).startswith("<6>{")


def test_request_fields_come_from_the_request_being_handled() -> None:
    fields = logs.RequestFields(handling.REQUEST)
    outside = record()
    assert fields.filter(outside)
    assert not hasattr(outside, "server")
    token = handling.REQUEST.set(("echo", ("10.0.0.1", 1234)))
    try:
        inside = record()
        own = record(server="other", client="x")
        assert fields.filter(inside)
        assert fields.filter(own)
    finally:
        handling.REQUEST.reset(token)
    assert fields_of(inside)["server"] == "echo"
    assert fields_of(inside)["client"] == "10.0.0.1:1234"
    assert (fields_of(own)["server"], fields_of(own)["client"]) == ("other", "x")  # (kept)


def test_text_stays_as_it_was() -> None:
    text = logs.formatter(False, 0).format(record("%s: ok", "echo"))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO supervisor\[\d+\]: echo: ok", text
    )
    assert isinstance(logs.formatter(True, 0), logs.JsonFormatter)
    assert isinstance(logs.formatter(False, 1), logs.JournalFormatter)
    assert logs.formatter(True, 1).journal  # type: ignore[attr-defined]

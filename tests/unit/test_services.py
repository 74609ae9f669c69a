"""The pure functions behind the bundled services, checked against their RFCs."""

import calendar
import struct
import time

import pytest
from supervisor_services.chargen import lines
from supervisor_services.daytime import daytime
from supervisor_services.qotd import QUOTES, quote_of_the_day
from supervisor_services.time import rfc868

DAY = 86_400


def chargen_line(index: int) -> bytes:
    """Line `index` of RFC 864's pattern, built independently of the service."""
    return bytes(32 + (index + column) % 95 for column in range(72)) + b"\r\n"


# -- daytime (RFC 867) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (0, b"Thursday, January 01, 1970 00:00:00-UTC\r\n"),
        (1_700_000_000, b"Tuesday, November 14, 2023 22:13:20-UTC\r\n"),
        (951_782_400.9, b"Tuesday, February 29, 2000 00:00:00-UTC\r\n"),
    ],
)
def test_daytime_formats_the_given_time_in_utc(now: float, expected: bytes) -> None:
    assert daytime(now) == expected


def test_daytime_defaults_to_now() -> None:
    before = time.time()
    line = daytime()
    after = time.time()
    stamp = calendar.timegm(time.strptime(line.decode("ascii"), "%A, %B %d, %Y %H:%M:%S-UTC\r\n"))
    assert int(before) <= stamp <= after


# -- time (RFC 868) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (0, 2_208_988_800),  # RFC 868: 1970-01-01 is 2,208,988,800
        (-2_208_988_800, 0),  # 1900-01-01 00:00 UTC
        (1_700_000_000.99, 3_908_988_800),  # fractions are dropped
        (2_085_978_495, 2**32 - 1),  # the last second before the 2036 rollover
        (2_085_978_496, 0),  # 2036-02-07 06:28:16 UTC wraps to 0
    ],
)
def test_rfc868_is_four_big_endian_bytes_since_1900(now: float, seconds: int) -> None:
    assert rfc868(now) == struct.pack(">I", seconds)


def test_rfc868_defaults_to_now() -> None:
    before = time.time()
    (seconds,) = struct.unpack(">I", rfc868())
    after = time.time()
    assert int(before) + 2_208_988_800 <= seconds <= int(after) + 2_208_988_800


# -- chargen (RFC 864) ----------------------------------------------------------------------


def test_chargen_lines_are_one_cycle_of_the_rotating_pattern() -> None:
    cycle = lines()
    assert cycle == b"".join(chargen_line(index) for index in range(95))
    assert cycle.startswith(b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]")
    assert len(cycle) == 95 * 74


@pytest.mark.parametrize("start", [1, 50, 94])
def test_chargen_lines_start_further_on(start: int) -> None:
    assert lines(start) == b"".join(chargen_line(start + index) for index in range(95))


def test_chargen_pattern_repeats_after_95_lines() -> None:
    assert lines(95) == lines(0)
    assert lines(96) == lines(1)


# -- quote of the day (RFC 865) -------------------------------------------------------------


def test_quote_is_the_same_all_day_long() -> None:
    day = 20_000 * DAY
    assert quote_of_the_day(day) == quote_of_the_day(day + DAY - 0.5)


def test_quotes_change_daily_and_cycle_through_all() -> None:
    day = 20_000 * DAY
    days = [quote_of_the_day(day + number * DAY) for number in range(len(QUOTES) + 1)]
    assert days[0] != days[1]
    assert set(days[: len(QUOTES)]) == {(quote + "\r\n").encode() for quote in QUOTES}
    assert days[len(QUOTES)] == days[0]


def test_quote_of_day_zero_is_the_first() -> None:
    assert quote_of_the_day(0) == b"Simple is better than complex.\r\n -- The Zen of Python\r\n"


def test_every_quote_fits_rfc_865() -> None:
    for number in range(len(QUOTES)):
        quote = quote_of_the_day(number * DAY)
        assert quote.isascii()
        assert quote.endswith(b"\r\n")
        assert 0 < len(quote) < 512


def test_quote_defaults_to_today() -> None:
    before = time.time()
    quote = quote_of_the_day()
    after = time.time()
    assert quote in {quote_of_the_day(before), quote_of_the_day(after)}

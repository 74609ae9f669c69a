"""A probe for tests/integration/test_scrape.py, run as its own process so that it shares no
GIL with the clients it is measured against: `python -m tests.round_trips HOST PORT`.

It makes back-to-back round trips on an echo server (a connection each: send, half-close, read
until closed), prints `started` after the first one, and stops when its standard input closes
(or after MAX_TRIPS, or MAX_SECONDS). Then it prints one JSON line: {"trips": [[start, end],
...], "failures": [...]}, times on the monotonic clock, which every process shares on Linux.

It runs at a lower priority (NICE): on a machine of two CPUs, the supervisor's loop takes one
and the probe, at full priority, would take much of the other, so the clients it is measured
against would see their answers late, and the probe's round trips (made while the loop is
free, after the answer went out) would count as made during them. At nice 10 the clients'
wake-ups come first; at nice 19 the probe hardly runs at all when the clients are busy.
"""

import json
import os
import select
import socket
import sys
import time

PAYLOAD = b"probe"
TIMEOUT = 10.0  # seconds for any one operation
MAX_TRIPS = 100_000
MAX_SECONDS = 120.0
NICE = 10  # (see above)


def round_trip(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(PAYLOAD)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def stopped() -> bool:
    """Whether standard input is closed (readable: at its end, as nothing is written there)."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


def main() -> None:
    address = (sys.argv[1], int(sys.argv[2]))
    os.nice(NICE)
    trips: list[tuple[float, float]] = []
    failures: list[str] = []
    deadline = time.monotonic() + MAX_SECONDS
    while len(trips) < MAX_TRIPS and time.monotonic() < deadline:
        start = time.monotonic()
        try:
            reply = round_trip(address)
        except OSError as exc:
            failures.append(repr(exc))
        else:
            if reply == PAYLOAD:
                trips.append((start, time.monotonic()))
            else:
                failures.append(repr(reply))
        if len(trips) + len(failures) == 1:
            print("started", flush=True)
        if stopped():
            break
    print(json.dumps({"trips": trips, "failures": failures}), flush=True)


if __name__ == "__main__":
    main()

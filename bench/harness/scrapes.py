"""A scrape of a supervisor's `/metrics`, as a client sees it: asked for in one format, with or
without gzip, timed from connect to the last byte, then decoded and checked.

The request is HTTP/1.1 with `Connection: close`, as Prometheus's is (its `Accept` and
`Accept-Encoding` headers chosen by the variant); the reply is read until the server closes. What
came back is reported as it came: the `Content-Encoding` answered (none is identity, whatever was
asked), the bytes on the wire (status line, headers and body as received) and the exposition's
bytes once decoded. A body is taken apart by what its headers say (`Transfer-Encoding: chunked`,
`Content-Length`, `Content-Encoding: gzip` through `gzip.decompress`), never by what was asked.

An exposition is valid when the reply is `200 OK` in the format asked for, whole (its length or
its chunks), decodable, ends as its format ends (OpenMetrics: `# EOF`; text: a newline) and has
every configured server's `supervisor_server_up` sample: a partial rendering fails the last.
"""

import gzip
import socket
import time
import zlib
from dataclasses import dataclass

from bench.harness.network import LOOPBACK

TIMEOUT = 10.0  # seconds for the connect and for each read
OPENMETRICS = "application/openmetrics-text"
TEXT = "text/plain"
SERVER_UP = b"\nsupervisor_server_up{"  # one sample per configured server


@dataclass(frozen=True)
class Variant:
    """What a scrape asks for: OpenMetrics or the text format, gzip or not."""

    openmetrics: bool
    gzip: bool

    @property
    def label(self) -> str:
        return ("OpenMetrics" if self.openmetrics else "text") + (", gzip" if self.gzip else "")

    def request(self) -> bytes:
        accept = f"{OPENMETRICS}; version=1.0.0" if self.openmetrics else f"{TEXT}; version=0.0.4"
        lines = [
            "GET /metrics HTTP/1.1",
            f"Host: {LOOPBACK}",
            f"Accept: {accept}",
            *(["Accept-Encoding: gzip"] if self.gzip else []),
            "Connection: close",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


# text, text with gzip, OpenMetrics, OpenMetrics with gzip
VARIANTS = tuple(
    Variant(openmetrics, zipped) for openmetrics in (False, True) for zipped in (False, True)
)


@dataclass(frozen=True)
class Reply:
    """What one scrape read: its time from connect to the last byte, and every byte."""

    seconds: float
    data: bytes
    error: str = ""  # the connection failed or timed out (data: what came before)

    @property
    def ok_status(self) -> bool:
        """`200 OK` (the cheap check made between back-to-back scrapes)."""
        return not self.error and self.data.split(b"\r\n", 1)[0].endswith(b" 200 OK")


@dataclass(frozen=True)
class Scrape:
    """One scrape, decoded and checked."""

    seconds: float  # connect to the last byte
    wire: int  # bytes received: status line, headers and body
    body: int  # the exposition's bytes, decoded (0 when it could not be)
    encoding: str  # the Content-Encoding answered ("" none: identity)
    problem: str  # "" when the exposition is valid, else what is wrong with it


def fetch(port: int, variant: Variant) -> Reply:
    """One scrape on a new connection, read until the server closes it."""
    request = variant.request()
    chunks: list[bytes] = []
    started = time.perf_counter()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as connection:
            connection.sendall(request)
            while chunk := connection.recv(262144):
                chunks.append(chunk)
    except OSError as exc:
        return Reply(
            time.perf_counter() - started, b"".join(chunks), str(exc) or type(exc).__name__
        )
    return Reply(time.perf_counter() - started, b"".join(chunks))


def scrape(port: int, variant: Variant, servers: int) -> Scrape:
    """One scrape, timed, then decoded and checked against `servers` configured servers."""
    reply = fetch(port, variant)
    encoding, body, problem = decode(reply, variant)
    if not problem:
        problem = check_exposition(body, variant, servers)
    return Scrape(reply.seconds, len(reply.data), len(body), encoding, problem)


def decode(reply: Reply, variant: Variant) -> tuple[str, bytes, str]:
    """The Content-Encoding answered, the exposition decoded, and what was wrong ("" nothing)."""
    if reply.error:
        return "", b"", reply.error
    head, separator, payload = reply.data.partition(b"\r\n\r\n")
    if not separator:
        return "", b"", "no end of the header"
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    encoding = headers.get("content-encoding", "")
    problem = answer_problem(status, headers, variant)
    if problem:
        return encoding, b"", problem
    body, problem = unframe(payload, headers)
    if problem:
        return encoding, b"", problem
    body, problem = decompress(body, encoding)
    return encoding, body, problem


def answer_problem(status: str, headers: dict[str, str], variant: Variant) -> str:
    """What is wrong with the status or the format of a reply ("" nothing)."""
    if not status.endswith(" 200 OK"):
        return f"status {status!r}"
    wanted = OPENMETRICS if variant.openmetrics else TEXT
    if not headers.get("content-type", "").startswith(wanted):
        return f"Content-Type {headers.get('content-type')!r}"
    return ""


def decompress(body: bytes, encoding: str) -> tuple[bytes, str]:
    """The body as its Content-Encoding says: as it is, or through gzip.decompress."""
    if encoding in ("", "identity"):
        return body, ""
    if encoding != "gzip":
        return b"", f"Content-Encoding {encoding!r}"
    try:
        return gzip.decompress(body), ""
    except (OSError, EOFError, zlib.error) as exc:
        return b"", f"gzip body does not decode ({exc})"


def unframe(payload: bytes, headers: dict[str, str]) -> tuple[bytes, str]:
    """The body as its framing says: chunks, a length, or all up to the close."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return unchunk(payload)
    length = headers.get("content-length")
    if length is None:
        return payload, ""
    if not length.isdigit() or int(length) != len(payload):
        return b"", f"Content-Length {length}, {len(payload)} bytes received"
    return payload, ""


def unchunk(payload: bytes) -> tuple[bytes, str]:
    """A chunked body decoded; it must end with its last (empty) chunk."""
    parts: list[bytes] = []
    at = 0
    while True:
        line_end = payload.find(b"\r\n", at)
        if line_end < 0:
            return b"", "chunked body cut short"
        try:
            size = int(payload[at:line_end].split(b";", 1)[0], 16)
        except ValueError:
            return b"", "malformed chunk size"
        if size == 0:
            return b"".join(parts), ""
        start = line_end + 2
        if payload[start + size : start + size + 2] != b"\r\n":
            return b"", "chunked body cut short"
        parts.append(payload[start : start + size])
        at = start + size + 2


def check_exposition(body: bytes, variant: Variant, servers: int) -> str:
    """What is wrong with a decoded exposition ("" nothing)."""
    if variant.openmetrics and not body.endswith(b"\n# EOF\n"):
        return "OpenMetrics exposition does not end with '# EOF'"
    if not variant.openmetrics and (not body.endswith(b"\n") or b"\n# EOF" in body):
        return "text exposition does not end with a newline, or has '# EOF'"
    found = body.count(SERVER_UP)
    if found != servers:
        return f"{found} supervisor_server_up samples for {servers} servers"
    return ""

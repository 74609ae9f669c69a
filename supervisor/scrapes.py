"""/metrics rendered a step at a time between the loop's turns, never in one piece.

A scrape of 1,000 servers is about 2.5 MB of text. Rendered in one go it held every server still for
140 ms; here it is a loop `Job` (loop.py), whose steps the loop runs for at most SLICE per turn,
serving every socket in between:

- one step per server reads its numbers in one go (a `Snapshot`: they agree with each other, a
  finished request counted in `requests_total` is in the histogram of the same scrape) and
  renders them only if they changed since the last scrape: a server at rest costs a tuple
  comparison, and its text is reused;
- the text is joined a family and JOIN_SERVERS servers at a time, a step each, and sent in
  those pieces; the supervisor-wide families and the `process_*` ones are a step;
- with gzip (the scraper's `Accept-Encoding`), one step per GZIP_CHUNK compressed.

Scrapes that arrive while a rendering runs wait for the next one, which starts when it ends:
a scrape never shows numbers from before it was asked (a client that made requests and then
scrapes sees them), and every scrape waiting shares one rendering, so a flood costs one
rendering at a time, sliced like any other. Why steps in the loop and not a thread: the README's
"Metrics off the hot path".
"""

import zlib
from collections import Counter
from collections.abc import Callable, Collection, Generator
from functools import partial
from typing import NamedTuple, Protocol

from supervisor import exposition
from supervisor.exposition import Collector
from supervisor.loop import Job
from supervisor.metrics import (
    SERVER_FAMILIES,
    Snapshot,
    Watched,
    children_memory,
    collectors_for,
    server_lines,
    snapshot,
)

GZIP_LEVEL = 1  # zlib's fastest: 2.5 MB in 9 ms to 127 kB; level 6: twice the CPU, 5% fewer bytes
GZIP_CHUNK = 65536  # bytes compressed per step: about 0.25 ms at level 1
JOIN_SERVERS = 100  # servers' samples of one family joined per step (the histogram's: 140 kB)
ANSWERS_PER_STEP = 4  # scrapes given their answer per step


class Variant(NamedTuple):
    """What a scraper asked for: the format, and whether it takes gzip."""

    openmetrics: bool
    gzip: bool


class Scraped(Watched, Protocol):
    def collect(self) -> None: ...


Body = list[bytes]  # an exposition in pieces, sent as they are (never joined into one copy)
Give = Callable[[Body | None], object]  # the body, or None if the rendering failed
Steps = Generator[None, None, dict[Variant, Body]]


class Scrapes:
    """Renders /metrics for the scrapes waiting, one rendering at a time, as a loop job."""

    def __init__(self, observed: Scraped) -> None:
        self._observed = observed
        self._collectors: list[Collector] = collectors_for(observed)
        self._headers = {
            openmetrics: [exposition.header(f, openmetrics).encode() for f in SERVER_FAMILIES]
            for openmetrics in (False, True)
        }
        # The last scrape's numbers and text of each server, by name (the text is made of the
        # name and the numbers only): reused while the numbers do not change.
        self._texts: dict[str, tuple[Snapshot, tuple[bytes, ...]]] = {}
        self._waiting: dict[Variant, list[Give]] = {}  # for the next rendering
        self._serving: dict[Variant, list[Give]] = {}  # for the one running
        self._job: Job | None = None

    def request(self, variant: Variant, give: Give) -> None:
        """`give` gets the body once the next rendering is done."""
        self._waiting.setdefault(variant, []).append(give)
        if self._job is None:
            self._start()

    def _start(self) -> None:
        self._job = self._observed.loop.start_job(
            "metrics", self._rendering(), self._done, partial(self._done, failed=True)
        )

    def _rendering(self) -> Generator[None, None, None]:
        # The scrapes asked before the first step (in the same turn of the loop, too) share it.
        self._serving, self._waiting = self._waiting, {}
        bodies = yield from self.render(self._serving)
        given = 0
        for variant, gives in self._serving.items():
            for give in gives:  # (each answer starts a send of up to 128 KiB: a few a step)
                give(bodies[variant])
                given += 1
                if given % ANSWERS_PER_STEP == 0:
                    yield

    def _done(self, _: object = None, failed: bool = False) -> None:
        """The rendering ended: its scrapes have their answer, or it failed (None for each;
        a second answer to a scrape already given one is dropped)."""
        self._job = None
        serving, self._serving = self._serving, {}
        if failed:
            for gives in serving.values():
                for give in gives:
                    give(None)
        if self._waiting and self._job is None:  # (a `give` may have asked again)
            self._start()

    def render(self, variants: Collection[Variant]) -> Steps:
        """The steps of one rendering; they return the body of each variant."""
        observed = self._observed
        observed.collect()  # what workers have reported, even if not read yet
        yield
        memory: Counter[str] = Counter()
        for name, resident in children_memory(observed.children):
            memory[name] += resident
            yield
        lines: list[tuple[bytes, ...]] = []
        texts: dict[str, tuple[Snapshot, tuple[bytes, ...]]] = {}
        for name, server in list(observed.servers.items()):
            numbers = snapshot(server, observed.running, memory[name])
            text = self._texts.get(name)
            if text is None or text[0] != numbers:
                text = (numbers, server_lines(name, numbers))
            texts[name] = text
            lines.append(text[1])
            yield
        self._texts = texts  # (a server gone since is forgotten)
        bodies: dict[Variant, Body] = {}
        for openmetrics in {variant.openmetrics for variant in variants}:
            body = yield from self._body(lines, openmetrics)
            bodies[Variant(openmetrics, gzip=False)] = body
            if Variant(openmetrics, gzip=True) in variants:
                bodies[Variant(openmetrics, gzip=True)] = [(yield from _gzip(body))]
        return bodies

    def _body(
        self, lines: list[tuple[bytes, ...]], openmetrics: bool
    ) -> Generator[None, None, Body]:
        """The exposition in pieces: each family's header, then its samples JOIN_SERVERS
        servers at a time (a step each)."""
        body = []
        for index, header in enumerate(self._headers[openmetrics]):
            body.append(header)
            for start in range(0, len(lines), JOIN_SERVERS):
                body.append(b"".join([text[index] for text in lines[start : start + JOIN_SERVERS]]))
                yield
        body.append(exposition.render(self._collectors, openmetrics))  # ends with # EOF
        yield
        return body


def _gzip(body: Body) -> Generator[None, None, bytes]:
    """`body` compressed as one gzip member, GZIP_CHUNK bytes per step."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    out = []
    for piece in body:
        view = memoryview(piece)
        for start in range(0, len(view), GZIP_CHUNK):
            out.append(compressor.compress(view[start : start + GZIP_CHUNK]))
            yield
    out.append(compressor.flush())
    return b"".join(out)


def render_all(scrapes: Scrapes, variant: Variant) -> bytes:
    """One rendering run to its end at once (for tests and benchmarks: not in the loop)."""
    steps = scrapes.render([variant])
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            bodies: dict[Variant, Body] = stop.value
            return b"".join(bodies[variant])

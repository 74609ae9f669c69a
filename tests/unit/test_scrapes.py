"""Rendering /metrics as a loop job: text reused while a server's numbers do not change, gzip
of the same bytes, and scrapes that arrive during a rendering served by the next one."""

import gzip
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import cast

import pytest

from supervisor.core import Supervisor
from supervisor.loop import Loop
from supervisor.scrapes import Body, Scrapes, Variant, render_all
from supervisor.stats import ReloadStats, UpgradeStats
from tests.unit.test_metrics import fake_server

TEXT, GZIP = Variant(openmetrics=False, gzip=False), Variant(openmetrics=False, gzip=True)


class Observed(SimpleNamespace):
    """What a scrape reads of the supervisor, with `count` servers; counts the renderings."""

    def __init__(self, loop: Loop, count: int) -> None:
        servers = [fake_server(f"s{index:03d}") for index in range(count)]
        super().__init__(
            servers={server.name: server for server in servers},
            running=True,
            children=[],
            reload_stats=ReloadStats(),
            upgrades=UpgradeStats(),
            loop=loop,
        )
        self.renderings = 0
        self.on_collect: list[Callable[[], object]] = []  # called at a rendering's first step

    def collect(self) -> None:
        self.renderings += 1
        for call in self.on_collect:
            call()
        self.on_collect.clear()


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def server_text(scrapes: Scrapes, name: str) -> tuple[bytes, ...]:
    return scrapes._texts[name][1]  # (the cache itself: reuse is about the very same objects)


def test_the_text_of_a_server_at_rest_is_reused_and_a_changed_one_rendered_again(
    loop: Loop,
) -> None:
    observed = Observed(loop, 3)
    scrapes = Scrapes(cast(Supervisor, observed))
    first = render_all(scrapes, TEXT)
    before = {name: server_text(scrapes, name) for name in observed.servers}
    observed.servers["s001"].stats.requests += 1
    second = render_all(scrapes, TEXT)
    after = {name: server_text(scrapes, name) for name in observed.servers}
    assert after["s000"] is before["s000"]
    assert after["s002"] is before["s002"]
    assert after["s001"] is not before["s001"]
    changed = first.replace(
        b'supervisor_requests_total{server="s001"} 0.0',
        b'supervisor_requests_total{server="s001"} 1.0',
    )
    assert servers_part(second) == servers_part(changed) != servers_part(first)


def servers_part(body: bytes) -> bytes:
    """The exposition without the process_* families (their numbers move by themselves)."""
    return body.split(b"# HELP process_", 1)[0]


def test_a_server_gone_is_forgotten(loop: Loop) -> None:
    observed = Observed(loop, 3)
    scrapes = Scrapes(cast(Supervisor, observed))
    render_all(scrapes, TEXT)
    del observed.servers["s001"]
    body = render_all(scrapes, TEXT)
    assert b'"s001"' not in body
    assert set(scrapes._texts) == {"s000", "s002"}


def test_gzip_is_the_same_exposition_compressed(loop: Loop) -> None:
    observed = Observed(loop, 250)  # (more than one group of servers joined per step)
    scrapes = Scrapes(cast(Supervisor, observed))
    for openmetrics in (False, True):
        steps = scrapes.render({Variant(openmetrics, False), Variant(openmetrics, True)})
        bodies = run_to_end(steps)
        plain = b"".join(bodies[Variant(openmetrics, False)])
        assert gzip.decompress(b"".join(bodies[Variant(openmetrics, True)])) == plain
        assert plain.endswith(b"# EOF\n") == openmetrics
        assert plain.count(b"supervisor_requests_total{") == 250


def run_to_end(steps: Iterator[None]) -> dict[Variant, Body]:
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            bodies: dict[Variant, Body] = stop.value
            return bodies


def test_scrapes_waiting_share_a_rendering_and_one_asked_during_it_gets_the_next(
    loop: Loop,
) -> None:
    """Five scrapes asked in one turn of the loop share one rendering; a sixth, asked while it
    runs, is not given numbers read before it asked: it waits for a second rendering."""
    observed = Observed(loop, 300)
    scrapes = Scrapes(cast(Supervisor, observed))
    given: dict[str, bytes] = {}

    def give(name: str) -> Callable[[Body | None], None]:
        def take(body: Body | None) -> None:
            assert body is not None
            given[name] = b"".join(body)
            if len(given) == 6:
                loop.stop()

        return take

    for index in range(5):
        scrapes.request(TEXT, give(f"early{index}"))

    def late() -> None:  # a request served, then a scrape, while the rendering runs
        observed.servers["s000"].stats.requests += 1
        scrapes.request(TEXT, give("late"))

    observed.on_collect.append(late)
    guard = loop.call_later(5, loop.stop)
    loop.run()
    guard.cancel()
    assert observed.renderings == 2
    assert len({given[f"early{index}"] for index in range(5)}) == 1
    assert b'supervisor_requests_total{server="s000"} 1.0' in given["late"]


def test_a_failed_rendering_answers_none_and_the_next_scrape_starts_afresh(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    observed = Observed(loop, 2)
    scrapes = Scrapes(cast(Supervisor, observed))
    broken = observed.servers["s001"]
    broken.stats = None  # a bug: reading it raises
    answers: list[Body | None] = []

    def take(body: Body | None) -> None:
        answers.append(body)
        if body is None:
            broken.stats = observed.servers["s000"].stats
            scrapes.request(TEXT, take)
        else:
            loop.stop()

    scrapes.request(TEXT, take)
    guard = loop.call_later(5, loop.stop)
    loop.run()
    guard.cancel()
    assert answers[0] is None
    assert answers[1] is not None
    assert b'server="s001"' in b"".join(answers[1])
    assert loop.faults == 1
    assert "internal error in job metrics" in caplog.text

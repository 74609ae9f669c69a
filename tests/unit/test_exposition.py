"""Our renderer says exactly what prometheus-client's encoders say, in both formats."""

from collections.abc import Iterable, Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.registry import Collector

from supervisor import exposition


class Families(Collector):
    """A counter, a gauge with a unit, a histogram, and label values that need escaping."""

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "demo_requests", "Requests.\nTwo lines \\ here.", labels=["server"]
        )
        counter.add_metric(["echo"], 3)
        counter.add_metric(['odd "name"\\with\nnewline'], 1)
        yield counter
        gauge = GaugeMetricFamily("demo_memory_bytes", "Memory.", unit="bytes", labels=["server"])
        gauge.add_metric(["echo"], 123456789012)
        yield gauge
        yield GaugeMetricFamily("demo_plain", "No labels.", value=0.5)
        histogram = HistogramMetricFamily(
            "demo_duration_seconds", "Durations.", labels=["server"], unit="seconds"
        )
        histogram.add_metric(["echo"], [("0.1", 2.0), ("1.0", 5.0), ("+Inf", 6.0)], 3.25)
        yield histogram


def samples(families: Iterable[Metric]) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in families
        for sample in family.samples
    }


def registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families())
    return registry


def test_the_text_format_matches_prometheus_client() -> None:
    ours = exposition.render([Families()], openmetrics=False).decode()
    theirs = generate_latest(registry()).decode()
    assert samples(parse_text(ours)) == samples(parse_text(theirs))
    assert len(samples(parse_text(ours))) == 9
    assert "# TYPE demo_requests_total counter\n" in ours
    assert not ours.endswith("# EOF\n")


def test_openmetrics_matches_prometheus_client() -> None:
    ours = exposition.render([Families()], openmetrics=True).decode()
    theirs = openmetrics_latest(registry()).decode()  # type: ignore[no-untyped-call]
    parsed = parse_openmetrics(theirs)  # type: ignore[no-untyped-call]
    assert samples(parse_openmetrics(ours)) == samples(parsed)  # type: ignore[no-untyped-call]
    assert ours.endswith("# EOF\n")
    assert "# UNIT demo_memory_bytes bytes\n" in ours
    assert "# TYPE demo_requests counter\n" in ours


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3", True),
        ("application/openmetrics-text; version=0.0.1", True),
        ("text/plain; version=0.0.4", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_the_format_follows_the_accept_header(accept: str, openmetrics: bool) -> None:
    assert exposition.wants_openmetrics(accept) is openmetrics

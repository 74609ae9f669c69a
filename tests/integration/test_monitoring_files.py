"""The monitoring files shipped in etc/: the example Prometheus configuration, the alerts and
their promtool unit tests, and the Grafana dashboard.

They are written against the metrics the supervisor exports (EXPORTED, from issue 4): every
PromQL expression in them may name only those, `up` and prometheus-client's process_*
metrics. promtool (Debian package prometheus, which ./dev test installs) checks the files'
syntax and runs the alert unit tests; the tests that need it are skipped without it.

There is no YAML parser among the project's dependencies: `alert_rules` reads the simple
subset alerts.yml is written in, and a test checks that it finds as many rules as promtool.
Generated rule files are written as JSON, which YAML parsers read as they are.
"""

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

PROMETHEUS = ROOT / "etc" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "supervisor.json"
EXAMPLE = ROOT / "etc" / "supervisor.toml"
PROMTOOL_TIMEOUT = 60.0

EXPORTED = frozenset(
    {
        "supervisor_requests_total",
        "supervisor_children",
        "supervisor_max_children",
        "supervisor_saturated",
        "supervisor_saturated_seconds_total",
        "supervisor_listen_queue",
        "supervisor_child_exits_total",
        "supervisor_request_duration_seconds_bucket",
        "supervisor_request_duration_seconds_sum",
        "supervisor_request_duration_seconds_count",
        "supervisor_child_cpu_seconds_total",
        "supervisor_children_memory_bytes",
        "supervisor_handler_errors_total",
        "supervisor_server_up",
        "supervisor_reloads_total",
        "supervisor_upgrades_total",
        "supervisor_config_last_reload_successful",
        "supervisor_config_last_reload_success_timestamp_seconds",
        "supervisor_build_info",
        "supervisor_rejected_total",
        "supervisor_internal_errors_total",
    }
)
PROCESS_METRIC = re.compile(r"process_\w+")
ALERT_NAMES = frozenset(
    {
        "SupervisorDown",
        "SupervisorServerDown",
        "SupervisorSaturated",
        "SupervisorHighErrorRatio",
        "SupervisorChildrenKilled",
        "SupervisorReloadFailed",
        "SupervisorUpgradeFailed",
        "SupervisorHighRejectionRatio",
        "SupervisorInternalErrors",
    }
)

# -- PromQL metric names -----------------------------------------------------------------------

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGE = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
# A name, whole, that is not a function call and does not follow a digit (1e3, 5m).
IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects. A selector by `__name__` counts as the
    name `__name__`, which no list allows."""
    names = {"__name__"} if "__name__" in expr else set()
    bare = STRING.sub('""', expr)
    bare = MATCHERS.sub("", bare)
    bare = RANGE.sub("", bare)
    bare = GROUPING.sub("", bare)
    names.update(name for name in IDENTIFIER.findall(bare) if name.lower() not in KEYWORDS)
    return names


def groupings(expr: str) -> list[frozenset[str]]:
    """The label lists of the expression's `by (...)` clauses."""
    return [
        frozenset(label.strip() for label in labels.split(","))
        for clause, labels in GROUPING.findall(STRING.sub('""', expr))
        if clause == "by"
    ]


def unknown_names(expr: str) -> set[str]:
    return {
        name
        for name in metric_names(expr)
        if name not in EXPORTED and name != "up" and not PROCESS_METRIC.fullmatch(name)
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le, server) (rate(foo_bucket{server=~"a|b}"}[5m]))', {"foo_bucket"}),
        ("a / on (server) group_left (version) b > bool 0.05 and c offset 5m", {"a", "b", "c"}),
        (
            'histogram_quantile(0.99, rate(x[1m])) * 1e3 + time() - Inf or absent(up{job="s"})',
            {"x", "up"},
        ),
        ("sum(rate (rate_total[5m])) without (mode)", {"rate_total"}),
        ('{__name__="sneaky"}', {"__name__"}),
    ],
)
def test_metric_names_finds_every_name_and_nothing_else(expr: str, names: set[str]) -> None:
    """Guards the checks below: a name the parser missed would escape them."""
    assert metric_names(expr) == names


# -- alerts.yml, read as the subset of YAML it is written in ------------------------------------

KEY = re.compile(r"^(\s*)(?:-\s+)?([\w-]+):(?:\s+(.*))?$")


def scalars(lines: list[str]) -> dict[str, str]:
    """Every `key: value` of a block of YAML lines, nesting ignored: plain and quoted scalars,
    and literal (|) or folded (>) block scalars."""
    values: dict[str, str] = {}
    index = 0
    while index < len(lines):
        match = KEY.match(lines[index])
        index += 1
        if match is None or match[3] is None:
            continue
        indent, key, value = len(match[1]), match[2], match[3].strip()
        if value[:1] in ("|", ">"):
            body: list[str] = []
            while index < len(lines) and (
                not lines[index].strip() or len(lines[index]) - len(lines[index].lstrip()) > indent
            ):
                body.append(lines[index].strip())
                index += 1
            value = ("\n" if value[0] == "|" else " ").join(body).strip()
        elif value[:1] in ('"', "'") and value[-1:] == value[0]:
            value = value[1:-1]
        values[key] = value
    return values


def alert_rules(text: str) -> dict[str, dict[str, str]]:
    """Each alerting rule's scalars (expr, for, severity, summary...), by alert name."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\s*- alert:", line)]
    rules: dict[str, dict[str, str]] = {}
    for start, end in zip(starts, [*starts[1:], len(lines)], strict=True):
        values = scalars(lines[start:end])
        assert values["alert"] not in rules, f"two rules named {values['alert']}"
        rules[values["alert"]] = values
    return rules


def mutate(text: str, alert: str, old: str, new: str) -> str:
    """alerts.yml with `old` replaced by `new` in one rule, outside comments; `old` must occur
    there exactly once."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.match(r"\s*- alert:", line)]
    start = next(i for i in starts if lines[i].split(":", 1)[1].strip() == alert)
    end = next((i for i in starts if i > start), len(lines))
    hits = [
        i for i in range(start, end) if old in lines[i] and not lines[i].lstrip().startswith("#")
    ]
    assert len(hits) == 1, f"{old!r} occurs {len(hits)} times in {alert}"
    assert lines[hits[0]].count(old) == 1
    lines[hits[0]] = lines[hits[0]].replace(old, new)
    return "".join(lines)


# -- promtool ----------------------------------------------------------------------------------


@pytest.fixture
def promtool() -> str:
    """The promtool command, or a skip."""
    command = shutil.which("promtool")
    if command is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return command


def run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool from the repository root; its stdout and stderr together in `stdout`."""
    return subprocess.run(
        [promtool, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
        cwd=ROOT,
    )


def write_recording_rules(path: Path, exprs: dict[str, str]) -> Path:
    """A rule file with one recording rule per expression, named by its key."""
    rules = [{"record": name, "expr": expr} for name, expr in exprs.items()]
    path.write_text(json.dumps({"groups": [{"name": "expressions", "rules": rules}]}, indent=2))
    return path


def test_prometheus_config_is_valid_and_loads_the_alerts(promtool: str) -> None:
    result = run(promtool, "check", "config", CONFIG.relative_to(ROOT))
    assert result.returncode == 0, result.stdout
    assert "SUCCESS: etc/prometheus/prometheus.yml is valid" in result.stdout
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"Checking etc/prometheus/alerts.yml\n  SUCCESS: {len(ALERT_NAMES)} rules found" in (
        result.stdout
    )


def test_prometheus_config_scrapes_the_example_supervisor() -> None:
    """A 15 s scrape of job `supervisor` at the metrics address of etc/supervisor.toml (the
    default, tcp://127.0.0.1:9464), and the alerts next to it."""
    text = CONFIG.read_text()
    assert re.search(r"(?m)^global:\n(?:  .*\n)*?  scrape_interval: 15s$", text)
    assert re.search(r"(?m)^rule_files:\n  - alerts\.yml$", text)
    job = re.search(
        r'(?m)^  - job_name: supervisor\n(?:    .*\n)*?      - targets: \["([^"]+)"\]$', text
    )
    assert job is not None
    address = tomllib.loads(EXAMPLE.read_text())["metrics"]["address"]
    assert address == "tcp://127.0.0.1:9464"
    assert f"tcp://{job[1]}" == address


def test_alert_rules_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", ALERTS.relative_to(ROOT))
    assert result.returncode == 0, result.stdout
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_every_alert_has_a_duration_a_severity_and_annotations() -> None:
    rules = alert_rules(ALERTS.read_text())
    assert set(rules) == ALERT_NAMES
    for name, rule in rules.items():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), name
        assert rule.get("severity") in ("critical", "warning"), name
        for annotation in ("summary", "description"):
            assert "{{ $labels." in rule.get(annotation, ""), (name, annotation)
    assert rules["SupervisorDown"]["expr"] == (
        'up{job="supervisor"} == 0 or absent(up{job="supervisor"})'
    )


def test_alert_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", ALERTS_TEST.relative_to(ROOT))
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout
    assert "FAILED" not in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert has unit tests that expect it to fire and some that expect it not to."""
    text = ALERTS_TEST.read_text()
    checks = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", text)
    assert {name for name, _ in checks} == ALERT_NAMES
    assert {name for name, empty in checks if empty} == ALERT_NAMES
    assert {name for name, empty in checks if not empty} == ALERT_NAMES


@pytest.fixture
def alerts_copy(tmp_path: Path) -> Path:
    """A copy of alerts_test.yml next to a copy of alerts.yml, which a test may change."""
    shutil.copyfile(ALERTS, tmp_path / "alerts.yml")
    return shutil.copyfile(ALERTS_TEST, tmp_path / "alerts_test.yml")


def test_alert_unit_tests_pass_on_the_copies(promtool: str, alerts_copy: Path) -> None:
    """Guards the test below: unchanged, the copies pass."""
    result = run(promtool, "test", "rules", alerts_copy)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("SupervisorDown", "for: 1m", "for: 15s"),
        ("SupervisorDown", ' or absent(up{job="supervisor"})', ""),
        ("SupervisorServerDown", "for: 1m", "for: 0m"),
        ("SupervisorSaturated", "> 0.9", "> 0.95"),
        ("SupervisorSaturated", "> 0.9", "> 0.75"),
        ("SupervisorSaturated", "for: 2m", "for: 1m"),
        ("SupervisorHighErrorRatio", "> 0.05", "> 0.07"),
        ("SupervisorHighErrorRatio", "> 0.05", "> 0.035"),
        ("SupervisorHighErrorRatio", "for: 10m", "for: 5m"),
        # A failed child counted twice, as a handler error and as a child exit.
        ("SupervisorHighErrorRatio", ">=", "+"),
        # No guard against a server without requests.
        ("SupervisorHighErrorRatio", "[5m])) > 0)", "[5m])))"),
        ("SupervisorChildrenKilled", "> 0", "> 1"),
        ("SupervisorChildrenKilled", 'outcome="killed"', 'outcome=~"killed|error"'),
        ("SupervisorReloadFailed", "for: 1m", "for: 15s"),
        ("SupervisorHighRejectionRatio", "> 0.25", "> 0.3"),
        ("SupervisorHighRejectionRatio", "> 0.25", "> 0.2"),
        ("SupervisorHighRejectionRatio", "for: 10m", "for: 5m"),
        # Rejected clients left out of the denominator (supervisor_requests_total does not
        # count them).
        ("SupervisorHighRejectionRatio", "+", "* 0 +"),
    ],
)
def test_alert_unit_tests_fail_for_a_changed_alert(
    promtool: str, alerts_copy: Path, alert: str, old: str, new: str
) -> None:
    rules = alerts_copy.parent / "alerts.yml"
    rules.write_text(mutate(rules.read_text(), alert, old, new))
    assert run(promtool, "check", "rules", rules).returncode == 0
    result = run(promtool, "test", "rules", alerts_copy)
    assert result.returncode != 0, result.stdout
    assert set(re.findall(r"(?m)^ +alertname: (\w+), time: ", result.stdout)) == {alert}


# -- the Grafana dashboard ---------------------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = frozenset({"timeseries", "stat"})
GRID_WIDTH = 24
GRAFANA_DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Each target's expression, with a name for it: `panel<id>_<refId>`."""
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield f"panel{panel['id']}_{target['refId']}", target["expr"]


def substitute(expr: str) -> str:
    """The expression with Grafana's variables replaced: durations by a duration, the
    dashboard's variables by `.*` (each stands in a regex matcher)."""

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return GRAFANA_DURATIONS.get(name, ".*")

    return VARIABLE.sub(value, expr)


def test_dashboard_is_an_importable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "Supervisor"
    assert re.fullmatch(r"[\w-]{1,40}", dashboard["uid"])
    assert dashboard["schemaVersion"] == 39
    assert dashboard.get("id") is None  # Grafana assigns it at import
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "server"}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    server = variables["server"]
    assert server["type"] == "query"
    assert server["datasource"] == DATASOURCE
    assert server["definition"] == "label_values(supervisor_requests_total, server)"
    assert server["query"]["query"] == server["definition"]
    assert server["multi"] is True
    assert server["includeAll"] is True


def test_dashboard_panels_have_ids_a_place_and_targets(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(panel_id, int) for panel_id in ids)
    assert len(set(ids)) == len(ids), ids
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        grid = panel["gridPos"]
        h, w, x, y = (grid[key] for key in "hwxy")
        assert all(isinstance(n, int) for n in (h, w, x, y)), panel["title"]
        assert min(h, w) > 0, panel["title"]
        assert min(x, y) >= 0, panel["title"]
        assert x + w <= GRID_WIDTH, panel["title"]
        for cell in ((row, column) for row in range(y, y + h) for column in range(x, x + w)):
            assert cell not in cells, f"panels {cells.get(cell)} and {panel['id']} overlap"
            cells[cell] = panel["id"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize(
    ("metric", "by"),
    [
        ("supervisor_requests_total", {"server"}),
        ("supervisor_children", {"server"}),
        ("supervisor_max_children", {"server"}),
        ("supervisor_saturated_seconds_total", {"server"}),
        ("supervisor_request_duration_seconds_bucket", {"le", "server"}),
        ("supervisor_child_exits_total", {"server", "outcome"}),
        ("supervisor_child_cpu_seconds_total", {"server", "mode"}),
        ("supervisor_children_memory_bytes", {"server"}),
        ("supervisor_handler_errors_total", {"server"}),
        ("supervisor_reloads_total", {"result"}),
        ("supervisor_upgrades_total", {"result"}),
        ("supervisor_rejected_total", {"server", "reason"}),
    ],
)
def test_dashboard_shows_the_metric_per_label(
    dashboard: dict[str, Any], metric: str, by: set[str]
) -> None:
    exprs = [expr for _, expr in targets(dashboard) if metric in metric_names(expr)]
    assert any(by in groupings(expr) for expr in exprs), exprs


def test_dashboard_shows_up_and_latency_percentiles(dashboard: dict[str, Any]) -> None:
    exprs = [expr for _, expr in targets(dashboard)]
    used = set().union(*map(metric_names, exprs))
    assert {"up", "supervisor_server_up"} <= used
    for quantile in ("0.5", "0.9", "0.99"):
        assert any(
            expr.startswith(f"histogram_quantile({quantile}, sum by (le, server) (rate(")
            and "supervisor_request_duration_seconds_bucket{" in expr
            and expr.endswith("[5m])))")
            for expr in exprs
        ), quantile
    children = next(
        panel for panel in dashboard["panels"] if panel["title"] == "Children against max_children"
    )
    assert {"supervisor_children", "supervisor_max_children"} == set().union(
        *(metric_names(target["expr"]) for target in children["targets"])
    )


def test_expressions_name_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exprs = dict(targets(dashboard))
    exprs.update((name, rule["expr"]) for name, rule in alert_rules(ALERTS.read_text()).items())
    unknown = {name: unknown_names(expr) for name, expr in exprs.items()}
    assert {name: names for name, names in unknown.items() if names} == {}


def test_dashboard_and_alert_expressions_parse(
    promtool: str, dashboard: dict[str, Any], tmp_path: Path
) -> None:
    exprs = {f"dashboard:{name}": substitute(expr) for name, expr in targets(dashboard)}
    assert not [expr for expr in exprs.values() if "$" in expr]
    rules = alert_rules(ALERTS.read_text())
    exprs.update((f"alerts:{name}", rule["expr"]) for name, rule in rules.items())
    result = run(promtool, "check", "rules", write_recording_rules(tmp_path / "x.yml", exprs))
    assert result.returncode == 0, result.stdout
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_expression_check_rejects_a_broken_expression(promtool: str, tmp_path: Path) -> None:
    """Guards the test above: promtool parses the expressions of a recording rule file."""
    exprs = {"good:rate": "rate(up[5m])", "bad:rate": "rate(up[5m]"}
    result = run(promtool, "check", "rules", write_recording_rules(tmp_path / "x.yml", exprs))
    assert result.returncode != 0, result.stdout
    assert "bad:rate" in result.stdout or "unclosed" in result.stdout, result.stdout

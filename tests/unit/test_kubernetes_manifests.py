"""etc/kubernetes/, checked offline: every manifest against the Kubernetes API schemas, and the
cross-references no schema sees (selectors, port names, the grace period against the
configuration in the ConfigMap, which is itself loaded as a supervisor configuration).

The schemas are kubernetes-validate's bundled ones, in strict mode (an unknown field fails).
The PodMonitor is a custom resource with no bundled schema: the fields that make the scrape
work are checked against the Deployment instead.
"""

import copy
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from supervisor import config
from supervisor.addresses import Address
from supervisor.responder import ANSWERS_GRACE
from tests.conftest import ROOT

KUBERNETES = ROOT / "etc" / "kubernetes"
KUBERNETES_VERSION = "1.33"  # the oldest release the manifests are meant for
CUSTOM_KINDS = {"PodMonitor"}  # no schema in kubernetes-validate: checked below
Manifest = dict[str, Any]


def documents(path: Path) -> Iterator[Manifest]:
    with path.open() as file:
        yield from (document for document in yaml.safe_load_all(file) if document)


def kustomization() -> Manifest:
    (document,) = documents(KUBERNETES / "kustomization.yaml")
    return document


def manifests() -> list[Manifest]:
    """Every resource that `kubectl apply -k etc/kubernetes` applies."""
    return [
        document
        for name in kustomization()["resources"]
        for document in documents(KUBERNETES / name)
    ]


def one(kind: str) -> Manifest:
    (found,) = [manifest for manifest in manifests() if manifest["kind"] == kind]
    return found


def pod_spec() -> Manifest:
    spec: Manifest = one("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> Manifest:
    found: Manifest
    (found,) = pod_spec()["containers"]
    return found


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def container_ports() -> dict[str, Manifest]:
    """The container's ports by name."""
    return {port["name"]: port for port in container()["ports"]}


def config_toml() -> str:
    (text,) = one("ConfigMap")["data"].values()
    assert isinstance(text, str)
    return text


@pytest.fixture
def loaded(tmp_path: Path) -> config.Config:
    """The ConfigMap's TOML as the supervisor loads it (handlers imported, addresses parsed)."""
    path = tmp_path / "supervisor.toml"
    path.write_text(config_toml())
    return config.load(str(path))


def toml_ports(loaded: config.Config) -> set[tuple[int, str]]:
    """(port, protocol) of every server and of the metrics endpoint."""
    found: list[Address] = [server.address for server in loaded.servers.values()]
    found.append(loaded.metrics.address)
    return {(address.port, "TCP" if address.is_stream else "UDP") for address in found}


def matches(selector: Manifest, labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, "only matchLabels is checked here"
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


# --- the API schemas -------------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert not list(KUBERNETES.glob("*.yml"))


@pytest.mark.parametrize(
    "manifest",
    [m for m in manifests() if m["kind"] not in CUSTOM_KINDS],
    ids=lambda m: f"{m['kind']}/{m['metadata']['name']}",
)
def test_a_manifest_validates_against_the_api_schema(manifest: Manifest) -> None:
    checked = kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    assert checked == KUBERNETES_VERSION


def test_strict_validation_refuses_an_unknown_field() -> None:
    broken = copy.deepcopy(one("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_custom_resources_have_no_bundled_schema() -> None:
    # kubernetes-validate's command line only warns about them (and exits 0): checked below.
    for kind in CUSTOM_KINDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(one(kind), KUBERNETES_VERSION, strict=True)


# --- what the schemas cannot see -----------------------------------------------------------


def test_the_selectors_pick_the_deployments_pods() -> None:
    deployment = one("Deployment")
    assert matches(deployment["spec"]["selector"], pod_labels())
    assert one("Service")["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert one("PodDisruptionBudget")["spec"]["selector"] == deployment["spec"]["selector"]
    assert one("NetworkPolicy")["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert one("PodMonitor")["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_ports_are_those_of_the_configuration(loaded: config.Config) -> None:
    ports = container_ports()
    assert len(ports) == len(container()["ports"]), "port names are unique"
    assert {(p["containerPort"], p["protocol"]) for p in ports.values()} == toml_ports(loaded)
    service = one("Service")["spec"]["ports"]
    assert {(p["port"], p["protocol"]) for p in service} == toml_ports(loaded)
    for port in service:  # each targets the container port of its number and protocol
        target = ports[port["targetPort"]]
        assert (target["containerPort"], target["protocol"]) == (port["port"], port["protocol"])


def test_only_the_scraper_reaches_the_metrics_port(loaded: config.Config) -> None:
    policy = one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    open_rule, metrics_rule = policy["ingress"]
    metrics = (loaded.metrics.address.port, "TCP")
    assert "from" not in open_rule  # any source, but only on the service ports
    assert {(p["port"], p["protocol"]) for p in open_rule["ports"]} == toml_ports(loaded) - {
        metrics
    }
    assert [(p["port"], p["protocol"]) for p in metrics_rule["ports"]] == [metrics]
    (source,) = metrics_rule["from"]
    assert set(source) == {"namespaceSelector", "podSelector"}  # one peer: both must match
    assert source["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


def test_the_pod_monitor_scrapes_the_metrics_port(loaded: config.Config) -> None:
    monitor = one("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert container_ports()[endpoint["port"]]["containerPort"] == loaded.metrics.address.port
    assert endpoint["path"] == "/metrics"
    # The job label the alerts select (etc/prometheus/alerts.yml: up{job="supervisor"}).
    (relabel,) = endpoint["relabelings"]
    assert relabel == {"targetLabel": "job", "replacement": "supervisor"}
    alerts = (ROOT / "etc" / "prometheus" / "alerts.yml").read_text()
    assert 'up{job="supervisor"}' in alerts


def test_the_scrape_annotations_name_the_metrics_port(loaded: config.Config) -> None:
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(loaded.metrics.address.port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_probes_ask_healthz(loaded: config.Config) -> None:
    readiness = container()["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/healthz"
    port = container_ports()[readiness["httpGet"]["port"]]
    assert port["containerPort"] == loaded.metrics.address.port
    liveness = container()["livenessProbe"]
    command = liveness["exec"]["command"]
    assert command[:2] == ["supervisor", "health"]
    # `supervisor health` gives up before the kubelet does, so a slow answer is a failure
    # it reports rather than a probe timeout.
    assert float(command[command.index("--timeout") + 1]) < liveness["timeoutSeconds"]


def test_the_grace_period_covers_the_prestop_sleep_and_the_drain(loaded: config.Config) -> None:
    settings = tomllib.loads(config_toml())["supervisor"]
    assert settings["shutdown_timeout"] == loaded.supervisor.shutdown_timeout
    assert settings["kill_grace"] == loaded.supervisor.kill_grace
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The supervisor's longest stop: SIGTERM to the requests left at shutdown_timeout, SIGKILL
    # kill_grace later, and kill_grace more for a child stuck in the kernel; then the answers
    # in progress on the endpoints (ANSWERS_GRACE), and its exit.
    margin = loaded.supervisor.kill_grace + 1 + ANSWERS_GRACE
    needed = pre_stop + loaded.supervisor.shutdown_timeout + loaded.supervisor.kill_grace + margin
    assert pod_spec()["terminationGracePeriodSeconds"] >= needed
    assert pre_stop > 0  # the endpoints converge before the listeners close


def test_the_rollout_keeps_every_replica_serving() -> None:
    deployment = one("Deployment")["spec"]
    assert deployment["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    budget = one("PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] < deployment["replicas"]


def test_the_pod_runs_unprivileged_as_the_images_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user.group(1)), int(user.group(2)))
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    own = container()["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"] == {"drop": ["ALL"]}


def test_the_configuration_is_mounted_where_the_image_looks(loaded: config.Config) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_config = re.search(r"SUPERVISOR_CONFIG=(\S+)", dockerfile)
    assert image_config
    directory, _, name = image_config.group(1).rpartition("/")
    (mount,) = container()["volumeMounts"]
    assert (mount["mountPath"], mount.get("readOnly")) == (directory, True)
    assert "subPath" not in mount  # a subPath mount never sees the ConfigMap's updates
    assert loaded.supervisor.watch_config  # and the pods reload them themselves
    assert loaded.supervisor.log_format == "json"
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert list(one("ConfigMap")["data"]) == [name]
    # With a read-only root, the pidfile and control socket go to the runtime's /dev/shm
    # (a root-owned sticky tmpfs, a directory the supervisor accepts for them).
    assert loaded.supervisor.pidfile is not None
    assert loaded.supervisor.pidfile.startswith("/dev/shm/")

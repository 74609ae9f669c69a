"""etc/kubernetes/ run for real: the ConfigMap and the Deployment played by `podman kube play`.

The variant played is the shipped pair with four changes: the image is the one the suite built,
one replica, names made unique to the test, and every container port published with `hostPort`
on 127.0.0.1 (podman 4.3's `kube play` has no `--publish`). The host ports are drawn below the
kernel's ephemeral range (net.ipv4.ip_local_port_range), where no `bind(0)` or `connect()`
anywhere on the machine lands, and checked free; a program that chose one of them itself in
between makes the play fail with "address already in use", and the test draws again. Once the
pod runs, podman holds its ports.

What podman 4.3 does with the manifest (seen here): the livenessProbe becomes the container's
healthcheck (`podman healthcheck run`); the readinessProbe, the preStop hook and
terminationGracePeriodSeconds are ignored (the stop timeout stays podman's 10 s); securityContext
applies (uid, no capabilities, no_new_privs, seccomp, read-only root); the ConfigMap becomes a
volume, mounted as a directory. `podman kube down` stops a running pod with a timeout of 0
(SIGKILL at once, no drain), so the tests do what the kubelet does after the preStop hook,
SIGTERM and SIGKILL when the rest of the grace period is over (`podman stop --time`), and then
`kube down` removes the pod.
"""

import json
import random
import re
import socket
import subprocess
import textwrap
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, LoggedProcess, connect, exchange
from tests.container.conftest import CONTAINER_PORTS
from tests.integration.test_hosted_servers import get_raw_path
from tests.podman import ENV, podman

pytestmark = pytest.mark.container

KUBERNETES = ROOT / "etc" / "kubernetes"
CLIENT_TIMEOUT = 10.0
PLAY_ATTEMPTS = 3
LOAD_THREADS = 4


@dataclass
class Played:
    """A pod played from the manifests: its names, its published ports, its log."""

    file: Path
    pod: str
    container: str
    config_volume: str
    deployment: dict[str, Any]
    toml: str
    ports: dict[str, int] = field(default_factory=dict)  # "7007/tcp" -> host port on 127.0.0.1
    logs: LoggedProcess | None = None

    def address(self, port: str) -> tuple[str, int]:
        return "127.0.0.1", self.ports[port]

    @property
    def log(self) -> LoggedProcess:
        assert self.logs is not None
        return self.logs

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.container, *command, check=check)

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.container).stdout.strip()

    @property
    def stop_timeout(self) -> int:
        """What the kubelet leaves between SIGTERM and SIGKILL: the grace period less the
        preStop sleep (which podman does not run)."""
        spec = self.deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        pre_stop: int = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace: int = spec["terminationGracePeriodSeconds"]
        return grace - pre_stop


def shipped() -> tuple[dict[str, Any], dict[str, Any]]:
    with (KUBERNETES / "configmap.yaml").open() as file:
        config_map = yaml.safe_load(file)
    with (KUBERNETES / "deployment.yaml").open() as file:
        deployment = yaml.safe_load(file)
    return config_map, deployment


def below_ephemeral_range(count: int) -> list[int]:
    """`count` consecutive ports under the ephemeral range, free on 127.0.0.1 right now."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        start = random.randrange(low // 2, low - count)
        ports = list(range(start, start + count))
        if all(is_free(port) for port in ports):
            return ports
    raise AssertionError(f"no {count} free ports in a row below {low}")


def is_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def variant(
    image: str, suffix: str, host_ports: list[int]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The shipped ConfigMap and Deployment, changed only as the module docstring says."""
    config_map, deployment = shipped()
    config_map["metadata"]["name"] += suffix
    deployment["metadata"]["name"] += suffix
    deployment["spec"]["replicas"] = 1
    spec = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    volume["configMap"]["name"] = config_map["metadata"]["name"]
    (container,) = spec["containers"]
    container["image"] = image
    published = {}
    for port, host_port in zip(container["ports"], host_ports, strict=True):
        port["hostIP"] = "127.0.0.1"
        port["hostPort"] = host_port
        published[f"{port['containerPort']}/{port['protocol'].lower()}"] = host_port
    return [config_map, deployment], published


PlayKube = Callable[[], Played]


@pytest.fixture
def play_kube(image: str, tmp_path: Path) -> Iterator[PlayKube]:
    """Play the manifests; every pod, container and volume is removed at the end."""
    played: list[Played] = []

    def play() -> Played:
        suffix = f"-{uuid.uuid4().hex[:8]}"
        file = tmp_path / f"kube{suffix}.yaml"
        for attempt in range(1, PLAY_ATTEMPTS + 1):
            documents, ports = variant(image, suffix, below_ephemeral_range(len(CONTAINER_PORTS)))
            file.write_text(yaml.safe_dump_all(documents))
            config_map, deployment = documents
            pod = f"{deployment['metadata']['name']}-pod-0"
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            this = Played(
                file=file,
                pod=pod,
                container=f"{pod}-{container['name']}",
                config_volume=config_map["metadata"]["name"],
                deployment=deployment,
                toml=next(iter(config_map["data"].values())),
                ports=ports,
            )
            played.append(this)
            done = podman("kube", "play", str(file), check=False)
            if done.returncode == 0:
                break
            remove(this)
            if "address already in use" not in done.stderr or attempt == PLAY_ATTEMPTS:
                raise AssertionError(f"podman kube play: exit {done.returncode}\n{done.stderr}")
        this.logs = LoggedProcess(
            ["podman", "logs", "--follow", this.container],
            {"CONTAINERS_CONF": ENV["CONTAINERS_CONF"]},
        )
        this.log.wait_for_log(r"ready: \d+ servers, pid 1", timeout=30)
        return this

    yield play
    for this in played:
        remove(this)
        if this.logs is not None:
            this.logs.stop()


def remove(played: Played) -> None:
    podman("kube", "down", str(played.file), check=False)
    podman("pod", "rm", "--force", "--ignore", "--time", "0", played.pod, check=False)
    podman("volume", "rm", "--force", played.config_volume, check=False)


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    """The log's lines, each one JSON object (the ConfigMap's log_format)."""
    return [json.loads(line) for line in lines]


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


# --- serving --------------------------------------------------------------------------------


def test_the_deployment_serves_through_its_published_ports(play_kube: PlayKube) -> None:
    played = play_kube()
    assert exchange(played.address("7007/tcp"), b"hello\n") == b"hello\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(CLIENT_TIMEOUT)
        udp.sendto(b"ping\n", played.address("7007/udp"))
        assert udp.recv(100) == b"ping\n"
    status, body = get_raw_path(played.address("7080/tcp"), "/kube")
    assert (status, body.split(b" (")[0]) == (200, b"Hello from hello")
    assert get_raw_path(played.address("9464/tcp"), "/healthz") == (200, b"ok\n")
    # The ConfigMap's log_format: every line one JSON object; the request's names its server.
    record = json.loads(played.log.wait_for_log(r"GET /kube HTTP/1\.1\S* 200").string)
    assert (record["server"], record["level"]) == ("hello", "info")
    assert record["client"]
    assert len(json_lines(played.log.lines)) == len(played.log.lines)
    # Published where the variant says and nowhere else (without hostIP and hostPort, podman
    # 4.3 would publish every containerPort on all the host's interfaces).
    published = podman("port", played.container).stdout.split()
    assert sorted(published[2::3]) == sorted(f"127.0.0.1:{port}" for port in played.ports.values())


def test_the_probes_the_configmap_and_the_security_context(play_kube: PlayKube) -> None:
    played = play_kube()
    # The livenessProbe is podman's healthcheck: `supervisor health` in the container.
    (container,) = played.deployment["spec"]["template"]["spec"]["containers"]
    liveness = container["livenessProbe"]
    assert " ".join(liveness["exec"]["command"]) in played.inspect("{{.Config.Healthcheck.Test}}")
    checked = podman("healthcheck", "run", played.container, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert played.inspect("{{.State.Health.Status}}") == "healthy"

    # The ConfigMap is the configuration: mounted where the image looks, and what runs (its
    # pidfile, in /dev/shm, is where `supervisor status` finds the control socket).
    assert played.exec("cat", "/etc/supervisor/supervisor.toml").stdout == played.toml
    assert played.exec("supervisor", "status").stdout.startswith("supervisor: running, pid 1")
    played.exec("test", "-S", "/dev/shm/supervisor/supervisor.sock")

    # Read-only root; the image's user; no capabilities, no privilege gain, seccomp on.
    denied = played.exec("touch", "/etc/written", check=False)
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr
    status = proc_status(int(played.inspect("{{.State.Pid}}")))
    assert status["Uid"].split() == ["10001"] * 4
    assert status["Gid"].split() == ["10001"] * 4
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # a filter
    memory = container["resources"]["limits"]["memory"]
    assert memory.endswith("Mi")
    assert played.inspect("{{.HostConfig.Memory}}") == str(int(memory[:-2]) * 2**20)


# --- a new configuration ----------------------------------------------------------------------


def kubelet_update(volume: Path, name: str, text: str) -> None:
    """Update a ConfigMap volume as the kubelet does: the files in a new directory, `..data`
    swapped to it by a rename, `name` a symlink through `..data` (made the first time: podman
    writes the file itself)."""
    version = volume / f"..{time.time_ns()}"
    version.mkdir(mode=0o755)
    (version / name).write_text(text)
    (version / name).chmod(0o644)
    (volume / "..data_tmp").symlink_to(version.name)
    (volume / "..data_tmp").rename(volume / "..data")
    if not (volume / name).is_symlink():
        (volume / f"{name}.tmp").symlink_to(f"..data/{name}")
        (volume / f"{name}.tmp").rename(volume / name)


def test_a_configmap_update_is_reloaded_by_the_pod(play_kube: PlayKube) -> None:
    """watch_config in the ConfigMap: the pod reloads an edited ConfigMap by itself, through
    the read-only mount, and keeps serving on a broken one."""
    played = play_kube()
    volume = Path(
        podman(
            "volume", "inspect", "--format", "{{.Mountpoint}}", played.config_volume
        ).stdout.strip()
    )
    kubelet_update(volume, "supervisor.toml", played.toml)  # the kubelet's layout, same content
    added = textwrap.dedent(
        """
        [servers.added]
        address = "tcp://127.0.0.1:7101"
        handler = "supervisor_services.echo:EchoHandler"
        """
    )
    seen = len(played.log.lines)
    kubelet_update(volume, "supervisor.toml", played.toml + added)
    played.log.wait_for_log(r"reloaded: ", start=seen)
    assert "added" in played.exec("supervisor", "status").stdout

    seen = len(played.log.lines)
    kubelet_update(volume, "supervisor.toml", played.toml + "[servers.broken]\n")
    played.log.wait_for_log(
        r"reload failed, still running the previous configuration: .*servers\.broken", start=seen
    )
    assert exchange(played.address("7007/tcp"), b"still\n") == b"still\n"
    assert "added" in played.exec("supervisor", "status").stdout


# --- stopping -------------------------------------------------------------------------------


@dataclass
class Load:
    """Clients of `hello` through the published port, each request a new connection."""

    address: tuple[str, int]
    answered: int = 0  # a whole HTTP answer
    refused: int = 0  # no connection
    reset: int = 0  # connected, then reset with no byte of an answer: never accepted (the
    # handshake still on its way at the listener's close; those queued are accepted first)
    cut: list[str] = field(default_factory=list)  # part of an answer, then an error
    running: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def run(self, deadline: float) -> None:
        while self.running.is_set() and time.monotonic() < deadline:
            outcome = self.one()
            with self.changed:
                if outcome in ("answered", "refused", "reset"):
                    setattr(self, outcome, getattr(self, outcome) + 1)
                else:
                    self.cut.append(outcome)
                self.changed.notify_all()
            if outcome == "refused":
                time.sleep(0.005)  # pacing, not waiting: a closed port refuses at once

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Until `predicate` holds (checked at each request's end); fail on a cut answer."""
        with self.changed:
            assert self.changed.wait_for(lambda: predicate() or bool(self.cut), timeout)
            assert not self.cut, self.cut

    def one(self) -> str:
        try:
            sock = connect(self.address, CLIENT_TIMEOUT)
        except ConnectionRefusedError:
            return "refused"
        received = b""
        try:
            with sock:
                sock.sendall(b"GET /load HTTP/1.0\r\n\r\n")
                while chunk := sock.recv(65536):
                    received += chunk
        except ConnectionResetError:
            if not received:
                return "reset"
            return f"reset after {received!r}"
        except OSError as exc:
            return f"{exc!r} after {received!r}"
        head, _, body = received.partition(b"\r\n\r\n")
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        if head.startswith(b"HTTP/1.0 200 ") and length and len(body) == int(length.group(1)):
            return "answered"
        return f"incomplete: {received!r}"


def scrape(played: Played) -> str:
    status, body = get_raw_path(played.address("9464/tcp"), "/metrics")
    assert status == 200
    return body.decode()


def metric(text: str, name: str, server: str) -> float:
    match = re.search(rf'^{name}{{server="{server}"}} (\S+)$', text, re.M)
    assert match, f"{name}{{server={server!r}}} not in the scrape"
    return float(match.group(1))


def test_a_stop_drains_under_load_and_the_pod_goes_down(play_kube: PlayKube) -> None:
    played = play_kube()
    load = Load(played.address("7080/tcp"))
    load.running.set()
    deadline = time.monotonic() + 60
    threads = [threading.Thread(target=load.run, args=(deadline,)) for _ in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    stop: subprocess.Popen[bytes] | None = None
    try:
        load.wait_for(lambda: load.answered >= 200, CLIENT_TIMEOUT)  # the load is on
        # A request held open across the stop: echo answers each line until the client ends.
        with connect(played.address("7007/tcp"), CLIENT_TIMEOUT) as held:
            held.sendall(b"before\n")
            assert held.recv(100) == b"before\n"
            seen = len(played.log.lines)
            started = time.monotonic()
            stop = subprocess.Popen(
                ["podman", "stop", "--time", str(played.stop_timeout), played.container],
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            timeout = tomllib.loads(played.toml)["supervisor"]["shutdown_timeout"]
            played.log.wait_for_log(
                rf"SIGTERM: stopping; \d+ requests in progress, waiting up to {timeout:g}s",
                start=seen,
            )
            refused, answered = load.refused, load.answered
            load.wait_for(lambda: load.refused >= refused + 20, CLIENT_TIMEOUT)  # into the drain
            load.running.clear()
            for thread in threads:
                thread.join()
            # Draining: not ready, the metrics endpoint still up; the listeners are closed,
            # so the count of accepted connections is final.
            assert get_raw_path(played.address("9464/tcp"), "/healthz") == (503, b"stopping\n")
            scraped = scrape(played)
            accepted = metric(scraped, "supervisor_requests_total", "hello")
            assert metric(scraped, "supervisor_server_up", "hello") == 0
            held.sendall(b"during the drain\n")
            assert held.recv(100) == b"during the drain\n"
            held.shutdown(socket.SHUT_WR)
            assert held.recv(100) == b""
        assert stop.wait(played.stop_timeout + CLIENT_TIMEOUT) == 0, stop.stderr
        stopped_in = time.monotonic() - started
    finally:
        load.running.clear()
        for thread in threads:
            thread.join()
        if stop is not None and stop.poll() is None:
            stop.kill()
            stop.wait()
        if stop is not None and stop.stderr is not None:
            stop.stderr.close()
    # Every connection the supervisor accepted got its whole answer.
    assert load.cut == []
    assert load.answered == accepted
    assert played.inspect("{{.State.ExitCode}}") == "0"
    (stopped,) = [
        line for line in json_lines(played.log.lines[seen:]) if line["message"] == "stopped"
    ]
    assert (stopped["pid"], stopped["level"]) == (1, "info")
    assert stopped_in < played.stop_timeout
    print(
        f"stop: {stopped_in:.2f}s; hello: {load.answered} answered (= accepted; "
        f"{load.answered - answered} after SIGTERM), {load.refused - refused} refused after "
        f"SIGTERM, {load.reset} reset in the handshake"
    )

    started = time.monotonic()
    podman("kube", "down", str(played.file))
    print(f"kube down of the stopped pod: {time.monotonic() - started:.2f}s")
    assert podman("pod", "exists", played.pod, check=False).returncode == 1

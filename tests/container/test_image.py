"""The container image, built from the real Dockerfile and run with podman.

Clients are the real ones (nc, socat, curl) on published loopback ports; `podman stop` sends
SIGTERM to the container's PID 1 and SIGKILL after its timeout, as `docker stop` does.
"""

import json
import re
import signal
import subprocess
import textwrap
import tomllib
from pathlib import Path

import psutil
import pytest

from supervisor import addresses
from tests.conftest import ROOT, children_of, connect, readline
from tests.container.conftest import CONTAINER_PORTS, PUBLISH_ALL, Container, StartContainer
from tests.podman import ENV, podman

pytestmark = pytest.mark.container

CLIENT_TIMEOUT = 20.0
IMAGE_USER = 10001
MOUNT_HANDLERS = ["--volume", f"{ROOT / 'tests'}:/app/tests:ro"]  # tests.handlers, unchanged


def run_client(*command: str, data: bytes = b"") -> bytes:
    done = subprocess.run(
        command, input=data, capture_output=True, timeout=CLIENT_TIMEOUT, check=True
    )
    return done.stdout


def metric(text: str, name: str, server: str) -> float:
    match = re.search(rf'^{name}{{server="{server}"}} (\S+)$', text, re.M)
    assert match, f"{name}{{server={server!r}}} not in the scrape"
    return float(match.group(1))


def exit_code(container: Container) -> int:
    """Wait for the container to end; its PID 1's exit status."""
    return int(podman("wait", container.name, timeout=CLIENT_TIMEOUT).stdout.strip())


def write_config(directory: Path, toml: str) -> Path:
    path = directory / "supervisor.toml"
    path.write_text(textwrap.dedent(toml))
    path.chmod(0o644)
    return path


# --- the image ------------------------------------------------------------------------------


def test_the_image_declares_how_it_runs(image: str) -> None:
    (inspected,) = json.loads(podman("image", "inspect", image).stdout)
    config = inspected["Config"]
    assert config["User"] == f"{IMAGE_USER}:{IMAGE_USER}"
    assert config["Entrypoint"] == ["supervisor", "run"]
    assert config["StopSignal"] == "SIGTERM"
    assert "SUPERVISOR_CONFIG=/etc/supervisor/supervisor.toml" in config["Env"]
    assert inspected["Healthcheck"]["Test"] == ["CMD", "supervisor", "health", "--timeout", "4"]
    # EXPOSE lists exactly the ports of the configuration the image ships.
    with (ROOT / "etc" / "container.toml").open("rb") as file:
        shipped = tomllib.load(file)
    urls = [server["address"] for server in shipped["servers"].values()]
    urls.append(shipped["metrics"]["address"])
    ports = {f"{a.port}/{'tcp' if a.is_stream else 'udp'}" for a in map(addresses.parse, urls)}
    assert set(config["ExposedPorts"]) == ports == set(CONTAINER_PORTS)


def test_the_bundled_services_answer_on_published_ports(start_container: StartContainer) -> None:
    container = start_container(*PUBLISH_ALL)
    host, echo = container.port("7007/tcp")
    assert run_client("nc", "-N", host, str(echo), data=b"hello\n") == b"hello\n"
    _, echo_udp = container.port("7007/udp")
    assert (
        run_client("socat", "-t", "5", "-", f"UDP:{host}:{echo_udp}", data=b"ping\n") == b"ping\n"
    )
    _, daytime = container.port("7013/tcp")
    assert re.match(rb"\w+, \w+ \d+, \d{4} ", run_client("nc", "-N", host, str(daytime)))
    _, discard = container.port("7009/tcp")
    assert run_client("nc", "-N", host, str(discard), data=b"x" * 100_000) == b""
    _, hello = container.port("7080/tcp")
    status = run_client(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{host}:{hello}/"
    )
    assert status == b"200"

    _, metrics_port = container.port("9464/tcp")
    scrape = run_client("curl", "-sf", f"http://{host}:{metrics_port}/metrics").decode()
    assert metric(scrape, "supervisor_requests_total", "echo") == 1
    assert metric(scrape, "supervisor_requests_total", "echo-udp") == 1
    assert metric(scrape, "supervisor_requests_total", "discard") == 1
    assert metric(scrape, "supervisor_requests_total", "hello") == 1
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape, capture_output=True, text=True, check=False
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_pid_1_is_the_supervisor_running_unprivileged(start_container: StartContainer) -> None:
    container = start_container()
    supervisor = psutil.Process(container.host_pid)
    assert supervisor.cmdline()[-2:] == ["/opt/venv/bin/supervisor", "run"]
    assert {supervisor.uids().real, supervisor.uids().effective} == {IMAGE_USER}
    assert {supervisor.gids().real, supervisor.gids().effective} == {IMAGE_USER}
    status = container.exec("supervisor", "status").stdout  # pidfile + control socket in /run
    assert status.startswith("supervisor: running, pid 1, ")


def test_an_upgrade_execs_in_place_as_pid_1_and_the_container_lives_on(
    start_container: StartContainer,
) -> None:
    """PID 1 cannot hand over to a child and exit (the container would end): `supervisor
    upgrade` checks the code installed in the image, then execs it in place."""
    container = start_container(*PUBLISH_ALL)
    before = psutil.Process(container.host_pid).create_time()
    host, echo = container.port("7007/tcp")
    assert run_client("nc", "-N", host, str(echo), data=b"before\n") == b"before\n"
    done = container.exec("supervisor", "upgrade", check=False)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"upgraded: pid 1 \(version [\d.]+\) took over from pid 1 \(version [\d.]+\)\n",
        done.stdout,
    )
    assert container.state()["Running"] is True
    assert psutil.Process(container.host_pid).create_time() == before  # the same process
    assert run_client("nc", "-N", host, str(echo), data=b"after\n") == b"after\n"
    _, metrics_port = container.port("9464/tcp")
    scrape = run_client("curl", "-sf", f"http://{host}:{metrics_port}/metrics").decode()
    assert metric(scrape, "supervisor_requests_total", "echo") == 2  # carried over the exec
    assert 'supervisor_upgrades_total{result="ok"} 1.0' in scrape
    assert container.exec("supervisor", "status").stdout.startswith("supervisor: running, pid 1")


def test_an_arbitrary_uid_in_group_0_can_run_it(start_container: StartContainer) -> None:
    # OpenShift's way: a uid the image has never heard of, in group 0.
    container = start_container("--user", "12345:0")
    assert psutil.Process(container.host_pid).uids().real == 12345
    assert container.exec("supervisor", "status").returncode == 0


def test_the_healthcheck(start_container: StartContainer) -> None:
    container = start_container()
    assert container.state()["Health"]["Status"] == "starting"  # type: ignore[index]
    checked = podman("healthcheck", "run", container.name, check=False)
    assert checked.returncode == 0, checked.stderr
    health = container.state()["Health"]
    assert health["Status"] == "healthy"  # type: ignore[index]
    assert health["Log"][-1]["Output"].strip() == "tcp://0.0.0.0:9464: 200 ok"  # type: ignore[index]


# --- as PID 1: signals, orphans, a graceful stop ----------------------------------------------


def test_stop_waits_for_the_request_in_flight_and_leaves_no_zombie(
    start_container: StartContainer, mounted_dir: Path
) -> None:
    write_config(
        mounted_dir,
        """
        [supervisor]
        path = ["/app"]
        shutdown_timeout = 6
        kill_grace = 2
        log_level = "debug"

        [metrics]
        address = "tcp://0.0.0.0:9464"

        [servers.hold]
        address = "tcp://0.0.0.0:8000"
        handler = "tests.handlers:PidHandler"

        [servers.daemonizer]
        address = "tcp://0.0.0.0:8001"
        handler = "tests.handlers:DoubleForkHandler"
        """,
    )
    container = start_container(
        *MOUNT_HANDLERS,
        "--volume",
        f"{mounted_dir}:/config:ro",
        "--env",
        "SUPERVISOR_CONFIG=/config/supervisor.toml",
        "--publish",
        "127.0.0.1::8000",
        "--publish",
        "127.0.0.1::8001",
    )
    # A handler leaves an orphan; it is re-parented to PID 1 and, once it exits, reaped.
    with connect(container.port("8001/tcp"), CLIENT_TIMEOUT) as client:
        client.sendall(b"go\n")
        orphan = int(readline(client).split()[1])
        client.sendall(b"release\n")
        assert readline(client) == b"released\n"
    container.logs.wait_for_log(rf"reaped pid {orphan}, not a child of ours: exited with status 0")
    container.logs.wait_for_log(r"daemonizer: child \d+ exited with status 0")  # the request's
    # Every process of the container descends from its PID 1.
    assert children_of(container.host_pid, zombie=True, recursive=True) == []

    # `docker stop` during a request: the request completes, then the supervisor exits 0 (a
    # SIGKILL at the stop timeout would show as 137).
    with connect(container.port("8000/tcp"), CLIENT_TIMEOUT) as client:
        readline(client)  # the request is running
        stop = subprocess.Popen(
            ["podman", "stop", "--time", "10", container.name],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            container.logs.wait_for_log(r"SIGTERM: stopping; 1 requests in progress")
            client.sendall(b"finish\n")
            assert readline(client) == b"bye\n"
            assert stop.wait(CLIENT_TIMEOUT) == 0
        finally:
            stop.kill()
            stop.wait()
    assert exit_code(container) == 0
    container.logs.wait_for_log(r"INFO supervisor\[1\]: stopped$")


def test_stop_right_after_start_is_not_lost(start_container: StartContainer) -> None:
    # SIGTERM is held from the first lines of `supervisor run`: as PID 1 it would otherwise be
    # dropped while the configuration loads, and `stop` would end in SIGKILL (137) 10 s later.
    container = start_container(ready=False)
    podman("stop", "--time", "10", container.name, timeout=CLIENT_TIMEOUT)
    assert exit_code(container) == 0


def test_sigint_stops_pid_1(start_container: StartContainer) -> None:
    container = start_container()
    podman("kill", "--signal", "SIGINT", container.name)
    assert exit_code(container) == 0
    container.logs.wait_for_log(r"SIGINT: stopping")


# --- configuring the image ------------------------------------------------------------------


def test_a_configuration_mounted_over_the_default_and_reloaded(
    start_container: StartContainer, mounted_dir: Path
) -> None:
    server = """
        [servers.{name}]
        address = "tcp://0.0.0.0:{port}"
        handler = "supervisor_services.echo:EchoHandler"
        """
    config = write_config(
        mounted_dir,
        """
        [supervisor]
        pidfile = "/run/supervisor/supervisor.pid"

        [metrics]
        address = "tcp://0.0.0.0:9464"
        """
        + server.format(name="first", port=9000),
    )
    container = start_container(
        "--volume",
        f"{config}:/etc/supervisor/supervisor.toml:ro",
        "--publish",
        "127.0.0.1::9000",
        "--publish",
        "127.0.0.1::9001",
    )
    host, port = container.port("9000/tcp")
    assert run_client("nc", "-N", host, str(port), data=b"mine\n") == b"mine\n"
    assert status_servers(container) == ["first"]

    # `docker exec ... supervisor reload` waits for the outcome; SIGHUP reloads as well.
    with config.open("a") as file:
        file.write(textwrap.dedent(server.format(name="second", port=9001)))
    reloaded = container.exec("supervisor", "reload")
    assert "second" in reloaded.stdout
    assert status_servers(container) == ["first", "second"]
    host, port = container.port("9001/tcp")
    assert run_client("nc", "-N", host, str(port), data=b"added\n") == b"added\n"
    config.write_text(config.read_text().replace("[servers.first]", "[servers.renamed]"))
    seen = len(container.logs.lines)
    podman("kill", "--signal", "HUP", container.name)
    container.logs.wait_for_log(r"reloaded: ", start=seen)
    assert status_servers(container) == ["renamed", "second"]


def status_servers(container: Container) -> list[str]:
    """The server names in `supervisor status`, run in the container."""
    table = container.exec("supervisor", "status").stdout.split("\nSERVER", 1)[1]
    return [line.split()[0] for line in table.split("\n\n", 1)[0].splitlines()[1:]]


def test_a_broken_configuration_ends_the_container_with_one_line(
    start_container: StartContainer, mounted_dir: Path
) -> None:
    write_config(mounted_dir, '[servers.echo]\naddress = "tcp://0.0.0.0:9000"\n')
    container = start_container(
        "--volume",
        f"{mounted_dir}:/config:ro",
        "--env",
        "SUPERVISOR_CONFIG=/config/supervisor.toml",
        ready=False,
    )
    assert exit_code(container) == 78
    logs = podman("logs", container.name).stderr.splitlines()
    assert len(logs) == 1, logs
    assert logs[0].startswith("/config/supervisor.toml: servers.echo.handler: is required, ")


def test_a_read_only_root_filesystem(start_container: StartContainer) -> None:
    # podman's --read-only mounts a tmpfs on /run holding a copy of the image's /run/supervisor.
    container = start_container("--read-only")
    assert container.exec("supervisor", "status").returncode == 0
    container.exec("test", "!", "-w", "/etc/supervisor")  # read-only indeed
    podman("kill", "--signal", signal.SIGTERM.name, container.name)
    assert exit_code(container) == 0

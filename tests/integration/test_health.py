"""`supervisor health` (the container image's HEALTHCHECK) and `$SUPERVISOR_CONFIG`."""

import signal
import socket
import textwrap
from pathlib import Path

from supervisor import health
from supervisor.addresses import Address
from tests.configs import ECHO, metrics_table, server_table, supervisor_table
from tests.conftest import StartSupervisor, connect, one_line_error, readline, run_cli

EX_CONFIG = 78
HOLD = supervisor_table(shutdown_timeout=10) + server_table("hold", "PidHandler")


def metrics_on(path: Path) -> str:
    return metrics_table(address=f"unix://{path}")


def test_health_of_a_running_supervisor(start_supervisor: StartSupervisor, sockdir: Path) -> None:
    endpoint = sockdir / "metrics.sock"
    supervisor = start_supervisor(ECHO + metrics_on(endpoint))
    result = run_cli("health", "-c", str(supervisor.config))
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"unix://{endpoint}: 200 ok\n",
        "",
    )


def test_health_while_stopping_is_unhealthy(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(HOLD + metrics_on(sockdir / "metrics.sock"))
    with connect(supervisor.inet("hold")) as client:
        readline(client)
        supervisor.signal(signal.SIGTERM)
        supervisor.wait_for_log("stopping; 1 requests in progress")
        result = run_cli("health", "-c", str(supervisor.config))
        assert (result.returncode, result.stdout) == (
            1,
            f"unix://{sockdir}/metrics.sock: 503 stopping\n",
        )
        client.sendall(b"done\n")
        assert readline(client) == b"bye\n"
    assert supervisor.wait() == 0


def test_health_with_nothing_listening_is_unhealthy(tmp_path: Path, sockdir: Path) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(ECHO + metrics_on(sockdir / "metrics.sock"))
    result = run_cli("health", "-c", str(config))
    assert result.returncode == 1
    assert result.stdout.startswith(f"unix://{sockdir}/metrics.sock: no answer from /healthz (")
    assert result.stdout.count("\n") == 1


def test_health_ignores_an_edit_elsewhere_in_the_file_that_is_not_reloaded(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(ECHO + metrics_on(sockdir / "metrics.sock"))
    with supervisor.config.open("a") as file:
        file.write("\n[servers.broken]\naddress = 7\n")  # a reload would reject it
    result = run_cli("health", "-c", str(supervisor.config))
    assert (result.returncode, result.stdout) == (0, f"unix://{sockdir}/metrics.sock: 200 ok\n")


def test_health_of_an_endpoint_that_never_answers_gives_up_at_the_timeout(
    tmp_path: Path, sockdir: Path
) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(ECHO + metrics_on(sockdir / "metrics.sock"))
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(sockdir / "metrics.sock"))
        silent.listen()  # accepted by the kernel, never answered
        result = run_cli("health", "-c", str(config), "--timeout", "0.5", timeout=10)
    assert result.returncode == 1
    assert result.stdout == f"unix://{sockdir}/metrics.sock: no answer from /healthz (timed out)\n"


def test_health_asks_a_wildcard_endpoint_on_loopback(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(ECHO)  # metrics on 127.0.0.1, an ephemeral port
    _, port = supervisor.inet("metrics")
    assert health.check(Address("tcp", host="0.0.0.0", port=port)) == (
        True,
        f"tcp://0.0.0.0:{port}: 200 ok",
    )


def test_health_needs_an_endpoint_it_can_ask(tmp_path: Path) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(ECHO + metrics_table(enabled=False))
    assert one_line_error(run_cli("health", "-c", str(config)), EX_CONFIG) == (
        f"{config}: metrics: the endpoint is disabled: no /healthz to ask"
    )
    config.write_text(ECHO + metrics_table(address="tcp://127.0.0.1:0"))
    assert one_line_error(run_cli("health", "-c", str(config)), EX_CONFIG) == (
        f"{config}: metrics.address: port 0 is not a port that can be asked"
    )


# --- $SUPERVISOR_CONFIG ---------------------------------------------------------------------


def test_the_configuration_comes_from_the_environment_unless_given(tmp_path: Path) -> None:
    from_env = tmp_path / "from-env.toml"
    from_env.write_text(textwrap.dedent(ECHO))
    given = tmp_path / "given.toml"
    given.write_text(textwrap.dedent(ECHO + server_table("echo2", "BaseEchoHandler")))
    env = {"SUPERVISOR_CONFIG": str(from_env)}
    assert run_cli("check", env=env).stdout.endswith(f"{from_env}: ok, 1 servers\n")
    assert run_cli("check", "-c", str(given), env=env).stdout.endswith(f"{given}: ok, 2 servers\n")
    # Empty counts as unset: the bundled example.
    assert run_cli("check", env={"SUPERVISOR_CONFIG": ""}).stdout.endswith(
        "etc/supervisor.toml: ok, 15 servers\n"
    )


def test_a_missing_file_named_by_the_environment_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = run_cli("run", env={"SUPERVISOR_CONFIG": str(missing)})
    assert one_line_error(result, EX_CONFIG).startswith(f"{missing}: cannot read the file")

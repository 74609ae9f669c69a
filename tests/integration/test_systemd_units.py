"""The shipped systemd units pass `systemd-analyze verify` with no complaint at all.

verify exits 0 even when it ignores a line, so every test also requires empty output. The
units are verified as shipped, except for the install path of the `supervisor` command, which
is replaced by this environment's (verify requires ExecStart= to name an existing program).
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import config
from tests.conftest import ROOT, run_cli

UNITS = ROOT / "systemd"
INSTALLED = "/opt/supervisor/bin/supervisor"
COMMAND = Path(sys.executable).parent / "supervisor"
NOTIFY_RELOAD_SINCE = 253  # the first systemd version that knows Type=notify-reload

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def install(name: str, directory: Path) -> Path:
    """Copy a unit into `directory`, with only the command's path changed; return the copy."""
    assert COMMAND.is_file(), f"{COMMAND} is missing: install the project in this venv"
    text = (UNITS / name).read_bytes()
    assert INSTALLED.encode() in text or name.endswith(".socket")
    target = directory / name
    target.write_bytes(text.replace(INSTALLED.encode(), str(COMMAND).encode()))
    return target


def verify(*units: Path) -> tuple[int, str]:
    """Run `systemd-analyze verify`; return its exit status and all it printed."""
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def systemd_version() -> int:
    output = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    match = re.match(r"systemd (\d+)", output)
    assert match is not None, output
    return int(match.group(1))


def test_service_and_socket_units_verify_cleanly(tmp_path: Path) -> None:
    directory = tmp_path.resolve()
    service = install("supervisor.service", directory)
    socket_unit = install("supervisor.socket", directory)
    status, output = verify(service, socket_unit)
    assert (status, output) == (0, "")


def test_the_units_are_copied_unchanged_but_for_the_command(tmp_path: Path) -> None:
    """Guards the test above: it verifies what is shipped, not an edited unit."""
    directory = tmp_path.resolve()
    for name in ("supervisor.service", "supervisor.socket"):
        copy = install(name, directory).read_bytes()
        assert (
            copy.replace(str(COMMAND).encode(), INSTALLED.encode()) == (UNITS / name).read_bytes()
        )
    assert f"ExecStart={COMMAND} run ".encode() in (directory / "supervisor.service").read_bytes()


def test_notify_reload_drop_in(tmp_path: Path) -> None:
    directory = tmp_path.resolve()
    service = install("supervisor.service", directory)
    drop_ins = directory / "supervisor.service.d"
    drop_ins.mkdir()
    drop_in = drop_ins / "notify-reload.conf"
    shutil.copyfile(UNITS / "notify-reload.conf", drop_in)
    status, output = verify(service)
    assert status == 0, output
    if systemd_version() >= NOTIFY_RELOAD_SINCE:
        assert output == ""
        return
    line = drop_in.read_text().splitlines().index("Type=notify-reload") + 1
    assert output == (f"{drop_in}:{line}: Failed to parse service type, ignoring: notify-reload\n")


def unit_settings(name: str) -> dict[str, list[str]]:
    """`KEY=VALUE` lines of a shipped unit: {KEY: [VALUE, ...]}, comments left out."""
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith("#"):
            settings.setdefault(key, []).append(value)
    return settings


def test_the_units_configuration_fits_the_unit() -> None:
    """etc/systemd.toml, the file the README installs for the unit: valid; everything it
    writes under the RuntimeDirectory= (ProtectSystem=strict, PrivateTmp=yes); its drain
    within TimeoutStopSec=; each of supervisor.socket's Listen lines one of its servers."""
    path = ROOT / "etc" / "systemd.toml"
    result = run_cli("check", "-c", str(path), env={"SUPERVISOR_ALLOW_ROOT": "1"})
    assert result.returncode == 0, result.stderr
    loaded = config.load(str(path))
    service = unit_settings("supervisor.service")
    (runtime,) = service["RuntimeDirectory"]
    written = [loaded.supervisor.pidfile] + [
        server.address.path for server in loaded.servers.values() if server.address.is_unix
    ]
    assert all(str(name).startswith(f"/run/{runtime}/") for name in written), written
    drain = loaded.supervisor.shutdown_timeout + loaded.supervisor.kill_grace
    assert drain < float(service["TimeoutStopSec"][0])
    assert service["ExecReload"] == [f"{INSTALLED} reload -c /etc/supervisor/supervisor.toml"]
    configured = {
        (server.address.is_stream, f"{server.address.host}:{server.address.port}")
        for server in loaded.servers.values()
        if not server.address.is_unix
    }
    sockets = unit_settings("supervisor.socket")
    listens = [(True, value) for value in sockets["ListenStream"]]
    listens += [(False, value) for value in sockets["ListenDatagram"]]
    assert listens
    assert set(listens) <= configured

"""The container suite's fixtures: the real Dockerfile built and run with podman.

No Docker engine runs on CI machines and no registry is reachable, so the image is built with
podman (`--isolation chroot`, as a build inside CI's sandbox needs) from the Dockerfile as it is;
`base-image` provides the Dockerfile's base image (present, pulled, or a Debian stand-in).
Every container a test starts is removed at the end, whatever happened.
"""

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, LoggedProcess
from tests.podman import ENV, podman

HERE = Path(__file__).resolve().parent
TAG = "localhost/socket-supervisor:test"
BUILD_TIMEOUT = 600.0
# Every port of the image's configuration, published on an ephemeral loopback port.
CONTAINER_PORTS = [
    "7007/tcp",
    "7007/udp",
    "7009/tcp",
    "7013/tcp",
    "7017/tcp",
    "7019/tcp",
    "7037/tcp",
    "7037/udp",
    "7080/tcp",
    "9464/tcp",
]
PUBLISH_ALL = [option for port in CONTAINER_PORTS for option in ("-p", f"127.0.0.1::{port}")]


def base_image() -> str:
    """The Dockerfile's base image, fully qualified as podman stores it."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, "the Dockerfile names its base image in ARG PYTHON_IMAGE"
    name = match.group(1)
    return name if "/" in name else f"docker.io/library/{name}"


@pytest.fixture(scope="session")
def image() -> str:
    """The image, built from the Dockerfile once per test run."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (./dev test installs it when run as root)")
    base = subprocess.run(
        [str(HERE / "base-image"), base_image()],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert base.returncode == 0, base.stderr
    used = base.stdout.split()[-1]
    print(f"container suite: building on {used}")
    previous = image_id()
    podman(
        "build",
        "--format=docker",  # OCI images have no HEALTHCHECK
        "--isolation=chroot",
        "--network=host",
        "--pull=never",
        f"--build-arg=PYTHON_IMAGE={used}",
        "--tag",
        TAG,
        str(ROOT),
        timeout=BUILD_TIMEOUT,
    )
    if previous and previous != image_id():  # the last run's, untagged now: no pile of them
        podman("image", "rm", previous, check=False)
    return TAG


def image_id() -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", TAG, check=False).stdout.strip()


class Container:
    """A running container of the image, its log followed line by line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.logs = LoggedProcess(
            ["podman", "logs", "--follow", name], {"CONTAINERS_CONF": ENV["CONTAINERS_CONF"]}
        )

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()

    def state(self) -> dict[str, object]:
        state: dict[str, object] = json.loads(self.inspect("{{json .State}}"))
        return state

    @property
    def host_pid(self) -> int:
        """The pid of the container's PID 1 as seen from the host."""
        return int(self.inspect("{{.State.Pid}}"))

    def port(self, container_port: str) -> tuple[str, int]:
        """The loopback address a container port is published on."""
        published = podman("port", self.name, container_port).stdout.split()[0]
        host, _, port = published.rpartition(":")
        return host, int(port)

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *command, check=check)

    def wait_ready(self) -> str:
        return self.logs.wait_for_log(r"ready: \d+ servers, pid 1", timeout=30).string


StartContainer = Callable[..., Container]


@pytest.fixture
def start_container(image: str) -> Iterator[StartContainer]:
    """Start containers (`podman run -d OPTIONS IMAGE ARGS`); every one is removed at the end."""
    started: list[Container] = []

    def start(*options: str, args: tuple[str, ...] = (), ready: bool = True) -> Container:
        name = f"sv-test-{uuid.uuid4().hex[:10]}"
        podman("run", "--detach", "--name", name, *options, image, *args)
        container = Container(name)
        started.append(container)
        if ready:
            container.wait_ready()
        return container

    yield start
    for container in started:
        podman("rm", "--force", "--time", "0", container.name, check=False)
        container.logs.stop()


@pytest.fixture
def mounted_dir(tmp_path: Path) -> Path:
    """A directory the container's unprivileged user can read, for files mounted into it."""
    path = tmp_path / "mounted"
    path.mkdir()
    path.chmod(0o755)  # a bind mount keeps the source's own mode, not its parents'
    return path

"""Servers nobody here wrote, hosted with `server =` by a real supervisor, with real clients.

The standard library's XML-RPC, WSGI and file servers, and socketserver servers from PyPI
(jsonrpclib-pelix, werkzeug, prometheus-client, dnslib), built by tests/hosted_servers.py, each
run in every mode its protocol allows: stream servers in fork, thread, inline and prefork mode,
the datagram one in fork, thread and inline mode (prefork is stream-only). One supervisor per
mode hosts them all. Every test also reads the supervisor's own count of the requests it ran
(`supervisor_requests_total`), and where the answer says which process served it, checks that
the mode's process did: the supervisor really hosted the server, nothing else answered.
"""

import http.client
import json
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonrpclib
import pytest
from dnslib import QTYPE, DNSRecord
from prometheus_client.parser import text_string_to_metric_families

from tests import hosted_servers
from tests.configs import ANY_PORT, METRICS_ANY_PORT, table
from tests.conftest import ROOT, Supervisor, one_line_error, run_cli
from tests.integration.test_metrics import scrape, scrape_until

STREAM_MODES = ("fork", "thread", "inline", "prefork")
DATAGRAM_MODES = ("fork", "thread", "inline")
IN_PROCESS_MODES = ("thread", "inline")
TIMEOUT = 5.0  # seconds for any one client operation
EX_CONFIG = 78
FACTORIES = "tests.hosted_servers"

# server name -> (address, factory in tests/hosted_servers.py)
SERVERS = {
    "xmlrpc": (ANY_PORT, "xmlrpc"),
    "multipath": (ANY_PORT, "multipath"),
    "wsgiref": (ANY_PORT, "wsgiref"),
    "files": (ANY_PORT, "files"),
    "jsonrpc": (ANY_PORT, "jsonrpc"),
    "werkzeug": (ANY_PORT, "werkzeug_server"),
    "prometheus": (ANY_PORT, "prometheus"),
    "dns-tcp": (ANY_PORT, "dns_tcp"),
    "dns-udp": ("udp://127.0.0.1:0", "dns_udp"),
}
CONTENT = "served from the hosted directory\n"  # of the one file there


def server_tables(mode: str) -> str:
    """Every server of SERVERS that can run in `mode`, as `server =` tables (two workers each
    in prefork mode, whatever the number of CPUs)."""
    workers = {"workers": 2} if mode == "prefork" else {}
    return "".join(
        table(
            f"servers.{name}",
            {"address": address, "server": f"{FACTORIES}:{factory}", "mode": mode, **workers},
        )
        for name, (address, factory) in SERVERS.items()
        if mode != "prefork" or not address.startswith("udp://")
    )


@dataclass
class Hosted:
    """A supervisor hosting every server in one mode."""

    mode: str
    supervisor: Supervisor

    def url(self, name: str, path: str = "/") -> str:
        host, port = self.supervisor.inet(name)
        return f"http://{host}:{port}{path}"

    def requests(self, name: str) -> float:
        """The supervisor's count of the server's requests, so far."""
        return scrape(self.supervisor).value("supervisor_requests_total", server=name)

    def counted(self, name: str, before: float, requests: int) -> None:
        """Wait until the supervisor has counted `requests` more requests of the server (a
        forked child's or a prefork worker's are reported a moment after its answer)."""
        expected = before + requests
        scrape_until(
            self.supervisor,
            lambda current: current.value("supervisor_requests_total", server=name) == expected,
        )

    def served_by_mode(self, pid: object) -> None:
        """The request ran where the mode runs it (`pid`: as the server answered it): in the
        supervisor (thread, inline), else in a process of its own (a forked child, a prefork
        worker)."""
        assert isinstance(pid, int), pid
        supervisor = self.supervisor
        if self.mode in IN_PROCESS_MODES:
            assert pid == supervisor.pid
            return
        assert pid != supervisor.pid
        assert pid not in {process.pid for process in supervisor.fork_servers()}
        if self.mode == "prefork":  # a worker lives on (a forked child may be gone already)
            assert pid in {child.pid for child in supervisor.live_children()}


@pytest.fixture(scope="module", params=STREAM_MODES)
def hosted(request: pytest.FixtureRequest) -> Iterator[Hosted]:
    """One supervisor per mode, hosting every server that mode allows; the `files` server
    serves a directory holding one file."""
    mode: str = request.param
    directory = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
    served = directory / "www"
    served.mkdir()
    (served / "served.txt").write_text(CONTENT)
    config = directory / "supervisor.toml"
    config.write_text(server_tables(mode) + METRICS_ANY_PORT)
    supervisor = Supervisor(config, {hosted_servers.FILES_DIRECTORY: str(served)})
    try:
        supervisor.wait_ready()
        yield Hosted(mode, supervisor)
    finally:
        supervisor.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def client_deadline() -> Iterator[None]:
    """xmlrpc.client and jsonrpclib take no timeout: every socket of this test gets one."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """One GET with urllib: (status, headers, body); an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 (Hosted.url)
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def get_raw_path(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    """One GET of `path` exactly as written (urllib would not send `..` unchanged)."""
    connection = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- the standard library -------------------------------------------------------------------


def test_xmlrpc_server(hosted: Hosted) -> None:
    before = hosted.requests("xmlrpc")
    with xmlrpc.client.ServerProxy(hosted.url("xmlrpc")) as proxy:
        assert proxy.add(2, 3) == 5
        served_by = proxy.pid()
        listed = proxy.system.listMethods()
        assert isinstance(listed, list)
        assert {"add", "pid", "system.listMethods"} <= set(listed)
        with pytest.raises(xmlrpc.client.Fault, match='method "nothing" is not supported'):
            proxy.nothing()
    hosted.served_by_mode(served_by)
    hosted.counted("xmlrpc", before, 4)


def test_multipath_xmlrpc_server_dispatches_by_path(hosted: Hosted) -> None:
    before = hosted.requests("multipath")
    for path, factor in (("/a", 10), ("/b", 100)):
        with xmlrpc.client.ServerProxy(hosted.url("multipath", path)) as proxy:
            assert proxy.path() == path
            assert proxy.scale(3) == 3 * factor
            hosted.served_by_mode(proxy.pid())
    with (
        xmlrpc.client.ServerProxy(hosted.url("multipath", "/c")) as proxy,
        pytest.raises(xmlrpc.client.Fault, match="KeyError"),
    ):
        proxy.path()
    hosted.counted("multipath", before, 7)


def test_wsgiref_server_environ_is_the_stdlib_one(hosted: Hosted) -> None:
    before = hosted.requests("wsgiref")
    host, port = hosted.supervisor.inet("wsgiref")
    status, headers, body = get(hosted.url("wsgiref", "/some/path"))
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    environ = json.loads(body)
    # What wsgiref's WSGIServer.setup_environ computes from HTTPServer.server_bind's results.
    assert environ["SERVER_PORT"] == str(port)
    assert environ["SERVER_NAME"] == socket.getfqdn(host)
    assert environ["SERVER_SOFTWARE"].startswith("WSGIServer/")
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"]) == ("GET", "/some/path")
    hosted.served_by_mode(environ["pid"])
    hosted.counted("wsgiref", before, 1)


def test_http_server_serves_its_directory_and_nothing_outside(hosted: Hosted) -> None:
    """http.server's SimpleHTTPRequestHandler, given its directory by the server's own
    finish_request (as `python -m http.server --directory` does)."""
    before = hosted.requests("files")
    status, _, body = get(hosted.url("files", "/served.txt"))
    assert (status, body.decode()) == (200, CONTENT)
    status, _, listing = get(hosted.url("files", "/"))
    assert status == 200
    assert b'href="served.txt"' in listing
    address = hosted.supervisor.inet("files")
    for outside in ("/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd"):
        status, body = get_raw_path(address, outside)
        assert status == 404, outside
        assert b"root:" not in body
    # The supervisor's working directory (the source tree) is not what this server serves.
    assert (ROOT / "pyproject.toml").is_file()
    status, _, _ = get(hosted.url("files", "/pyproject.toml"))
    assert status == 404
    hosted.counted("files", before, 5)


# -- PyPI packages --------------------------------------------------------------------------


def test_jsonrpclib_server(hosted: Hosted) -> None:
    before = hosted.requests("jsonrpc")
    proxy = jsonrpclib.ServerProxy(hosted.url("jsonrpc"))
    try:
        assert proxy.add(2, 3) == 5
        hosted.served_by_mode(proxy.pid())
        with pytest.raises(jsonrpclib.ProtocolError, match="nothing"):
            proxy.nothing()
    finally:
        proxy("close")()
    hosted.counted("jsonrpc", before, 3)


def test_werkzeug_server(hosted: Hosted) -> None:
    before = hosted.requests("werkzeug")
    host, port = hosted.supervisor.inet("werkzeug")
    status, headers, body = get(hosted.url("werkzeug", "/from/werkzeug"))
    assert status == 200
    assert headers["Server"].startswith("Werkzeug/")
    environ = json.loads(body)
    # werkzeug's make_environ reads the server's server_address: the real bound one.
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == (host, str(port))
    assert environ["PATH_INFO"] == "/from/werkzeug"
    hosted.served_by_mode(environ["pid"])
    hosted.counted("werkzeug", before, 1)
    hosted.supervisor.wait_for_log(
        r"servers\.werkzeug: BaseWSGIServer overrides serve_forever\(\), which is not used"
    )


def test_prometheus_client_exporter_server(hosted: Hosted) -> None:
    before = hosted.requests("prometheus")
    status, headers, body = get(hosted.url("prometheus", "/metrics"))
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    hosted.served_by_mode(int(samples["hosted_exporter_pid"]))
    hosted.counted("prometheus", before, 1)


def ask_dns(address: tuple[str, int], tcp: bool) -> tuple[list[str], int]:
    """One A question with dnslib's own client: (the A records' addresses, the TXT pid)."""
    question = DNSRecord.question("example.test", "A")
    reply = DNSRecord.parse(question.send(*address, tcp=tcp, timeout=TIMEOUT))
    assert reply.header.id == question.header.id
    assert str(reply.q.qname) == "example.test."
    found: dict[str, list[Any]] = {}
    for record in reply.rr:
        found.setdefault(QTYPE[record.rtype], []).append(record.rdata)
    [txt] = found["TXT"]
    label, _, pid = str(txt).strip('"').partition("=")
    assert label == "pid"
    return [str(rdata) for rdata in found["A"]], int(pid)


def test_dnslib_tcp_server(hosted: Hosted) -> None:
    before = hosted.requests("dns-tcp")
    addresses, pid = ask_dns(hosted.supervisor.inet("dns-tcp"), tcp=True)
    assert addresses == [hosted_servers.DNS_ADDRESS]
    hosted.served_by_mode(pid)
    hosted.counted("dns-tcp", before, 1)


# (the module's supervisors, less prefork: the same one per mode as the stream tests use)
@pytest.mark.parametrize("hosted", DATAGRAM_MODES, indirect=True)
def test_dnslib_udp_server(hosted: Hosted) -> None:
    before = hosted.requests("dns-udp")
    addresses, pid = ask_dns(hosted.supervisor.inet("dns-udp"), tcp=False)
    assert addresses == [hosted_servers.DNS_ADDRESS]
    hosted.served_by_mode(pid)
    hosted.counted("dns-udp", before, 1)


@pytest.mark.parametrize(
    ("factory", "address", "kind"),
    [
        ("dns_binding_tcp", ANY_PORT, "TCPServer"),
        ("dns_binding_udp", "udp://127.0.0.1:0", "UDPServer"),
    ],
)
def test_dnslib_server_class_that_binds_in_init_is_refused(
    tmp_path: Path, factory: str, address: str, kind: str
) -> None:
    """Without the subclass (hosted_servers.BindLater), dnslib's classes bind in __init__."""
    path = tmp_path / "supervisor.toml"
    path.write_text(table("servers.dns", {"address": address, "server": f"{FACTORIES}:{factory}"}))
    line = one_line_error(run_cli("check", "-c", str(path)), EX_CONFIG)
    assert line == (
        f"{path}: servers.dns.server: {FACTORIES}:{factory}() returned a {kind} that binds in "
        "__init__: build it with bind_and_activate=False"
    )

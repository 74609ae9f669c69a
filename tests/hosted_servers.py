"""Servers nobody here wrote, as factories for `server = "tests.hosted_servers:NAME"`.

Each function returns a socketserver server of the standard library or of a PyPI package, built
unbound the way its own documentation allows (`bind_and_activate=False`, werkzeug's `fd=`), set
up the usual way (functions registered, an application set). Where the answer can carry it, the
process that served the request says its pid, so a test can tell which mode ran it. Nothing
here knows it is hosted: tests/integration/test_hosted_servers.py runs them under a real
supervisor.

The two dnslib servers need a small subclass: dnslib's `UDPServer` / `TCPServer` bind in
`__init__`, unconditionally (`dns_binding_tcp` and `dns_binding_udp` use them without it: refused).
"""

import contextlib
import http.server
import json
import os
import socket
import socketserver
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from xmlrpc.server import (
    MultiPathXMLRPCServer,
    SimpleXMLRPCDispatcher,
    SimpleXMLRPCRequestHandler,
    SimpleXMLRPCServer,
)

import werkzeug.serving
from dnslib import QTYPE, RR, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from dnslib.server import TCPServer as DnslibTCPServer
from dnslib.server import UDPServer as DnslibUDPServer
from jsonrpclib.SimpleJSONRPCServer import SimpleJSONRPCServer
from prometheus_client import CollectorRegistry, Gauge, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# Never bound: what the servers compute (server_name, SERVER_NAME...) must come from the address
# the supervisor bound, which this is not.
UNUSED = ("0.0.0.0", 0)
# The directory the `files` server serves: set in the supervisor's environment by the test.
FILES_DIRECTORY = "HOSTED_FILES_DIRECTORY"
DNS_ADDRESS = "192.0.2.7"  # (TEST-NET-1: what the resolver answers for every name)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    """Which process ran the call."""
    return os.getpid()


# -- the standard library -------------------------------------------------------------------


def xmlrpc() -> SimpleXMLRPCServer:
    """xmlrpc.server's server with `add`, `pid` and the introspection functions."""
    server = SimpleXMLRPCServer(UNUSED, logRequests=False, bind_and_activate=False)
    server.register_introspection_functions()
    server.register_function(add)  # type: ignore[arg-type]  # (typeshed: any marshallable argument)
    server.register_function(pid)
    return server


class AnyPathHandler(SimpleXMLRPCRequestHandler):
    """Every path is an RPC path: the server picks the dispatcher (as CPython's own tests of
    MultiPathXMLRPCServer set it up)."""

    rpc_paths = ()


def _dispatcher(path: str, factor: int) -> SimpleXMLRPCDispatcher:
    """A dispatcher whose `path()` says which it is and whose `scale(x)` is x * factor."""

    def where() -> str:
        return path

    def scale(x: int) -> int:
        return x * factor

    dispatcher = SimpleXMLRPCDispatcher()
    dispatcher.register_function(where, "path")
    dispatcher.register_function(scale)  # type: ignore[arg-type]  # (typeshed: any marshallable argument)
    dispatcher.register_function(pid)
    return dispatcher


def multipath() -> MultiPathXMLRPCServer:
    """xmlrpc.server's MultiPathXMLRPCServer: one dispatcher on /a, another on /b."""
    server = MultiPathXMLRPCServer(
        UNUSED, AnyPathHandler, logRequests=False, bind_and_activate=False
    )
    server.add_dispatcher("/a", _dispatcher("/a", 10))
    server.add_dispatcher("/b", _dispatcher("/b", 100))
    return server


ENVIRON_KEYS = ("SERVER_NAME", "SERVER_PORT", "PATH_INFO", "SERVER_SOFTWARE", "REQUEST_METHOD")


def environ_application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """A WSGI application that answers, as JSON, what the server put in its environ."""
    seen = {key: environ.get(key) for key in ENVIRON_KEYS}
    body = json.dumps({**seen, "pid": os.getpid()}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response("200 OK", headers)
    return [body]


class QuietWSGIHandler(WSGIRequestHandler):
    """wsgiref's handler without its access log line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


def wsgiref() -> WSGIServer:
    """wsgiref's WSGI server, running `environ_application`."""
    server = WSGIServer(UNUSED, QuietWSGIHandler, bind_and_activate=False)
    server.set_app(environ_application)
    return server


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    """http.server's file handler without its access log line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


class DirectoryServer(http.server.ThreadingHTTPServer):
    """What `python -m http.server --directory DIR` runs (http.server.test's DualStackServer):
    a server whose finish_request hands its handler the directory to serve."""

    directory = ""

    def server_bind(self) -> None:
        # suppress exception when protocol is IPv4 (as the standard library does)
        with contextlib.suppress(Exception):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def finish_request(self, request: Any, client_address: Any) -> None:
        handler: Any = self.RequestHandlerClass  # (it takes directory=: not in typeshed's type)
        handler(request, client_address, self, directory=self.directory)


def files() -> DirectoryServer:
    """http.server serving the directory named by $HOSTED_FILES_DIRECTORY (the supervisor's
    working directory is elsewhere: the source tree)."""
    server = DirectoryServer(UNUSED, QuietFileHandler, bind_and_activate=False)
    server.directory = os.environ[FILES_DIRECTORY]
    return server


# -- PyPI packages --------------------------------------------------------------------------


def jsonrpc() -> SimpleJSONRPCServer:
    """jsonrpclib-pelix's JSON-RPC server with `add` and `pid`."""
    server = SimpleJSONRPCServer(UNUSED, logRequests=False, bind_and_activate=False)
    server.register_function(add)
    server.register_function(pid)
    return server


class QuietWerkzeugHandler(werkzeug.serving.WSGIRequestHandler):
    """werkzeug's handler without its access log line per request."""

    def log(self, type: str, message: str, *args: Any) -> None:
        return None


def werkzeug_server() -> werkzeug.serving.BaseWSGIServer:
    """werkzeug's development server, running `environ_application`. With `fd=` it takes the
    socket it is given instead of binding one: here an unbound placeholder, closed after (the
    server keeps its own duplicate)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as placeholder:
        return werkzeug.serving.BaseWSGIServer(
            UNUSED[0],
            UNUSED[1],
            environ_application,
            handler=QuietWerkzeugHandler,
            fd=placeholder.fileno(),
        )


def prometheus() -> ThreadingWSGIServer:
    """prometheus-client's exporter server class (what start_http_server runs, with a handler
    as quiet as the one there) on a registry of its own, with a gauge read at scrape time: the
    pid of the process that serves the scrape."""
    registry = CollectorRegistry(auto_describe=True)
    gauge = Gauge("hosted_exporter_pid", "The process serving this scrape", registry=registry)
    gauge.set_function(os.getpid)
    server = ThreadingWSGIServer(UNUSED, QuietWSGIHandler, bind_and_activate=False)
    server.set_app(make_wsgi_app(registry))
    return server


class Resolver(BaseResolver):  # type: ignore[misc]  # (dnslib has no type hints)
    """Answers every question with an A record (DNS_ADDRESS) and a TXT record `pid=N`."""

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = request.q.qname
        reply.add_answer(RR(name, QTYPE.A, rdata=A(DNS_ADDRESS), ttl=60))
        reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT(f"pid={os.getpid()}"), ttl=0))
        return reply


class BindLater(socketserver.TCPServer):
    """dnslib's servers call socketserver's __init__ with bind_and_activate left True: while
    __init__ runs, server_bind and server_activate do nothing; afterwards they are the class's
    own (the supervisor's adoption runs them). Put first among the bases."""

    _constructing = False

    def __init__(self, server_address: Any, handler: Any) -> None:
        self._constructing = True
        try:
            super().__init__(server_address, handler)
        finally:
            self._constructing = False

    def server_bind(self) -> None:
        if not self._constructing:
            super().server_bind()

    def server_activate(self) -> None:
        if not self._constructing:
            super().server_activate()


class UnboundDNSUDPServer(BindLater, DnslibUDPServer):  # type: ignore[misc]
    """dnslib's UDP server, built unbound."""


class UnboundDNSTCPServer(BindLater, DnslibTCPServer):  # type: ignore[misc]
    """dnslib's TCP server, built unbound."""


QUIET_DNS_LOG = "-request,-reply,-truncated,-error"


def _dns(tcp: bool, server: type[socketserver.BaseServer] | None) -> socketserver.BaseServer:
    """The socketserver server of dnslib's DNSServer wrapper (its resolver and logger set)."""
    wrapper = DNSServer(
        Resolver(),
        address=UNUSED[0],
        port=UNUSED[1],
        tcp=tcp,
        logger=DNSLogger(QUIET_DNS_LOG),
        server=server,
    )
    built: socketserver.BaseServer = wrapper.server
    return built


def dns_udp() -> socketserver.BaseServer:
    return _dns(tcp=False, server=UnboundDNSUDPServer)


def dns_tcp() -> socketserver.BaseServer:
    return _dns(tcp=True, server=UnboundDNSTCPServer)


def dns_binding_udp() -> socketserver.BaseServer:
    """dnslib's own UDP server class, which binds (to a port of its own) in __init__."""
    return _dns(tcp=False, server=None)


def dns_binding_tcp() -> socketserver.BaseServer:
    """dnslib's own TCP server class, which binds and listens in __init__."""
    return _dns(tcp=True, server=None)

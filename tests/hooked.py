"""Server factories for `server =` tests (hosting.py): socketserver servers with their own hooks,
and ones the supervisor must refuse. Each returns an object built as its class intends, with
`bind_and_activate=False` unless it is meant to be refused."""

import os
import socketserver
import ssl
import sys
import time
from typing import Any
from xmlrpc.server import SimpleXMLRPCServer

UNUSED = ("127.0.0.1", 0)  # (the supervisor's socket is used instead)


class CountHandler(socketserver.StreamRequestHandler):
    """Answers with the server's request count after it counted this one, its verify count,
    its service_actions count and the pid: `served=N verified=N serviced=N pid=N`."""

    def handle(self) -> None:
        server: Any = self.server
        server.served += 1
        self.wfile.write(
            f"served={server.served} verified={server.verified} serviced={server.serviced} "
            f"pid={os.getpid()}\n".encode()
        )


class Counting(socketserver.TCPServer):
    """State on the server object, as third-party servers keep it."""

    def __init__(self) -> None:
        super().__init__(UNUSED, CountHandler, bind_and_activate=False)
        self.served = 0
        self.verified = 0
        self.serviced = 0


def counting() -> Counting:
    return Counting()


class Alternating(Counting):
    """verify_request turns every other client away."""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.verified += 1
        return self.verified % 2 == 1


def alternating() -> Alternating:
    return Alternating()


class FailingHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"about to fail\n")
        raise RuntimeError("handler failed on purpose")


class ReportsErrors(socketserver.TCPServer):
    """Its own handle_error: one line on stderr, with the exception it is called in."""

    def __init__(self) -> None:
        super().__init__(UNUSED, FailingHandler, bind_and_activate=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        print(f"own handle_error: {sys.exc_info()[1]!r} pid={os.getpid()}", file=sys.stderr)


def reports_errors() -> ReportsErrors:
    return ReportsErrors()


class Servicing(Counting):
    """service_actions counts its calls and says when, on stderr."""

    def service_actions(self) -> None:
        self.serviced += 1
        print(
            f"service_actions {self.serviced} at {time.monotonic():.3f} pid {os.getpid()}",
            file=sys.stderr,
        )


def servicing() -> Servicing:
    return Servicing()


class CloseHandler(socketserver.StreamRequestHandler):
    """Does what a handler may do to its server (server_close, shutdown, a blocking listening
    socket), then answers."""

    def handle(self) -> None:
        server: Any = self.server
        server.server_close()
        server.shutdown()
        self.wfile.write(b"closed it\n")


class Closing(socketserver.TCPServer):
    def __init__(self) -> None:
        super().__init__(UNUSED, CloseHandler, bind_and_activate=False)


def closing() -> Closing:
    return Closing()


class NameHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: Any = self.server
        self.wfile.write(f"{server.server_name} {server.server_port}\n".encode())


def http_named() -> Any:
    """An HTTPServer: server_name and server_port as its server_bind computes them."""
    from http.server import HTTPServer  # noqa: PLC0415

    return HTTPServer(UNUSED, NameHandler, bind_and_activate=False)


class ExitsInHooks(Counting):
    """verify_request and service_actions that end the process they run in, as a careless
    hook may (sys.exit): they must not end the supervisor."""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        sys.exit(3)

    def service_actions(self) -> None:
        raise SystemExit("bye")


def exits_in_hooks() -> ExitsInHooks:
    return ExitsInHooks()


def refuses_by_instance() -> Counting:
    """verify_request set on the object, not its class (socketserver calls it all the same)."""
    server = Counting()
    server.verify_request = lambda request, client_address: False  # type: ignore[method-assign]
    return server


class UdpCounting(socketserver.UDPServer):
    """A datagram server whose server_close() leaves its socket alone (no super() call)."""

    def __init__(self) -> None:
        super().__init__(UNUSED, UdpCountHandler, bind_and_activate=False)
        self.served = 0

    def server_close(self) -> None:
        print(f"server_close of {type(self).__name__} pid {os.getpid()}", file=sys.stderr)


class UdpCountHandler(socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        server: Any = self.server
        server.served += 1
        self.wfile.write(f"served={server.served}\n".encode())


def udp_counting() -> UdpCounting:
    return UdpCounting()


class Closes(Counting):
    """Says when its server_close() is called, and in which process."""

    def server_close(self) -> None:
        super().server_close()
        print(f"server_close of {type(self).__name__} pid {os.getpid()}", file=sys.stderr)


def closes() -> Closes:
    return Closes()


SHARED = Counting()


def shared() -> Counting:
    """The same object on every call: two tables naming this are refused."""
    return SHARED


# -- refused -------------------------------------------------------------------------------


def raises() -> socketserver.BaseServer:
    raise RuntimeError("no database")


def not_a_server() -> object:
    return object()


def binds() -> socketserver.TCPServer:
    return socketserver.TCPServer(UNUSED, CountHandler)  # (bind_and_activate=True)


def ssl_wrapped() -> socketserver.TCPServer:
    server = socketserver.TCPServer(UNUSED, CountHandler, bind_and_activate=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


class OwnGetRequest(socketserver.TCPServer):
    def get_request(self) -> Any:
        return super().get_request()


def own_get_request() -> OwnGetRequest:
    return OwnGetRequest(UNUSED, CountHandler, bind_and_activate=False)


class Connects(socketserver.TCPServer):
    def server_bind(self) -> None:
        super().server_bind()
        self.socket.connect(("127.0.0.1", 9))


def connects() -> Connects:
    return Connects(UNUSED, CountHandler, bind_and_activate=False)


def xmlrpc() -> SimpleXMLRPCServer:
    """A stream server, refused on a datagram address."""
    return SimpleXMLRPCServer(UNUSED, logRequests=False, bind_and_activate=False)


class Warned(Counting):
    """Overrides hooks that are the supervisor's job: a warning says they are not used."""

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        raise AssertionError("not to be called")

    def process_request(self, request: Any, client_address: Any) -> None:
        raise AssertionError("not to be called")


def warned() -> Warned:
    return Warned()

"""Request handlers written exactly as for the standard library's socketserver, used by tests.

Nothing here depends on the supervisor (VersionHandler only says which version runs it): the
same classes run under socketserver.TCPServer.
"""

import os
import signal
import socketserver
import subprocess
import time

import supervisor  # (VersionHandler: the code its process started with, new after an upgrade)


class LineEchoHandler(socketserver.StreamRequestHandler):
    """Echo each line back, prefixed with the server address it was accepted on."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(b"%s %s" % (repr(self.server.server_address).encode(), line))


class DatagramEchoHandler(socketserver.DatagramRequestHandler):
    """Echo a datagram back through socketserver's rfile/wfile."""

    def handle(self) -> None:
        self.wfile.write(b"echo " + self.rfile.read())


class BaseEchoHandler(socketserver.BaseRequestHandler):
    """The plainest handler: self.request is a socket (stream) or (data, socket) (datagram)."""

    def handle(self) -> None:
        if isinstance(self.request, tuple):
            data, sock = self.request
            sock.sendto(b"base " + data, self.client_address)
        else:
            self.request.sendall(b"base " + self.request.recv(1024))


class PidHandler(socketserver.StreamRequestHandler):
    """Send our pid, then wait for one line before answering `bye`: holds a request open."""

    def handle(self) -> None:
        self.wfile.write(b"%d\n" % os.getpid())
        self.wfile.flush()
        self.rfile.readline()
        self.wfile.write(b"bye\n")


class DatagramPidHandler(socketserver.DatagramRequestHandler):
    """Answer a datagram with our pid (the supervisor's, in thread or inline mode)."""

    def handle(self) -> None:
        self.wfile.write(b"%d\n" % os.getpid())


class SleepHandler(socketserver.StreamRequestHandler):
    """Answer after a short pause, so that requests overlap under load."""

    delay = 0.02

    def handle(self) -> None:
        self.rfile.readline()
        time.sleep(self.delay)
        self.wfile.write(b"done\n")


class FailingHandler(socketserver.StreamRequestHandler):
    """Raise in handle(), after reading the request."""

    def handle(self) -> None:
        line = self.rfile.readline()
        raise RuntimeError(f"handler failure on purpose: {line!r}")


class SelfKillingHandler(socketserver.BaseRequestHandler):
    """Kill its own process with SIGKILL (fork mode only)."""

    def handle(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class StubbornHandler(socketserver.StreamRequestHandler):
    """Ignore SIGTERM, say so, then wait for a line that never comes."""

    def handle(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.wfile.write(b"%d\n" % os.getpid())
        self.wfile.flush()
        self.rfile.readline()


class NotAHandler:
    """A class that is not a BaseRequestHandler subclass."""


class SubprocessHandler(socketserver.StreamRequestHandler):
    """Run a program and report its exit status, as handlers that shell out do."""

    def handle(self) -> None:
        self.rfile.readline()
        done = subprocess.run(["sh", "-c", "exit 3"], check=False)
        self.wfile.write(b"%d\n" % done.returncode)


class BlockingDatagramHandler(socketserver.DatagramRequestHandler):
    """Make the server socket blocking, as a handler may, then answer."""

    def handle(self) -> None:
        self.socket.setblocking(True)
        self.wfile.write(b"echo " + self.rfile.read())


class PrintHandler(socketserver.StreamRequestHandler):
    """print() to stdout without flushing, as quick debugging does."""

    def handle(self) -> None:
        print("print-handler-was-here")
        self.wfile.write(b"printed\n")


class RealtimeSignalHandler(socketserver.BaseRequestHandler):
    """Die of a real-time signal, which has no name in the signal module."""

    def handle(self) -> None:
        signal.signal(signal.SIGRTMIN + 3, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGRTMIN + 3)


class IdleTimeoutHandler(socketserver.StreamRequestHandler):
    """StreamRequestHandler's own idle timeout, short."""

    timeout = 0.2

    def handle(self) -> None:
        self.rfile.readline()


class CloseServerHandler(socketserver.StreamRequestHandler):
    """Call self.server.server_close(), which a forked child may do with socketserver."""

    def handle(self) -> None:
        self.server.server_close()
        self.wfile.write(b"closed\n")


class GreetingHandler(socketserver.StreamRequestHandler):
    """Answer each line with a greeting, so tests can tell handler classes apart."""

    greeting = b"hello"

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(self.greeting + b" " + line)


class OtherGreetingHandler(GreetingHandler):
    greeting = b"howdy"


class SlowDatagramHandler(socketserver.DatagramRequestHandler):
    """Answer a datagram after a pause long enough to still be running at a stop."""

    delay = 0.5

    def handle(self) -> None:
        data = self.rfile.read()
        time.sleep(self.delay)
        self.wfile.write(b"late " + data)


class CpuBurnHandler(socketserver.StreamRequestHandler):
    """Burn about 50 ms of CPU time (not wall time) before answering."""

    cpu_seconds = 0.05

    def handle(self) -> None:
        self.rfile.readline()
        deadline = time.process_time() + self.cpu_seconds
        while time.process_time() < deadline:
            pass
        self.wfile.write(b"burned\n")


class DoubleForkHandler(socketserver.StreamRequestHandler):
    """Leave an orphan behind, as a handler that daemonizes a helper does: fork, fork again, let
    the middle process exit. Report the orphan's pid once it is orphaned; it exits when the
    client sends a line, so the client decides when there is an orphan to reap."""

    def handle(self) -> None:
        release_read, release_write = os.pipe()
        report_read, report_write = os.pipe()
        middle = os.fork()
        if middle == 0:
            orphan = os.fork()
            if orphan == 0:
                os.close(release_write)
                os.read(release_read, 1)  # returns at EOF: when the handler closes its end
                os._exit(0)
            os.write(report_write, b"%d" % orphan)
            os._exit(0)
        os.close(release_read)
        os.close(report_write)
        os.waitpid(middle, 0)  # the middle process is gone: the orphan has a new parent now
        orphan_pid = int(os.read(report_read, 32))
        os.close(report_read)
        self.wfile.write(b"orphan %d\n" % orphan_pid)
        self.wfile.flush()
        self.rfile.readline()
        os.close(release_write)
        self.wfile.write(b"released\n")


class PendingSubprocessHandler(socketserver.StreamRequestHandler):
    """Run a program that fails, and collect its status only a while after it has exited: the
    window in which a careless reaper in the same process would take the status away."""

    def handle(self) -> None:
        self.rfile.readline()
        program = subprocess.Popen(["sh", "-c", "exit 3"])
        time.sleep(0.05)  # not a synchronisation: the window a reaper must leave alone
        self.wfile.write(b"%d\n" % program.wait())


class ThreadHandler(socketserver.StreamRequestHandler):
    """Answer from a thread the handler starts and joins, as handlers that fan out do."""

    def handle(self) -> None:
        import threading  # noqa: PLC0415

        answer: list[bytes] = []

        def work() -> None:
            answer.append(b"%d %s" % (threading.active_count(), self.rfile.readline().upper()))

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        self.wfile.write(answer[0])


class ForkWithThreadHandler(socketserver.StreamRequestHandler):
    """Fork while a thread runs; report how many threads the new process believes it has (one:
    fork() copies only the calling thread, and threading's after-fork hook says so)."""

    def handle(self) -> None:
        import threading  # noqa: PLC0415

        release = threading.Event()
        thread = threading.Thread(target=release.wait)
        thread.start()
        report_read, report_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(report_write, b"%d" % threading.active_count())
            os._exit(0)
        os.waitpid(pid, 0)
        release.set()
        thread.join()
        self.wfile.write(os.read(report_read, 16) + b"\n")
        os.close(report_read)
        os.close(report_write)


class InheritableHandler(socketserver.BaseRequestHandler):
    """Say whether the connection would pass to a program the handler executes (1) or not."""

    def handle(self) -> None:
        self.request.sendall(b"%d\n" % os.get_inheritable(self.request.fileno()))


class GracefulHandler(socketserver.StreamRequestHandler):
    """Send our pid, wait for a line; on SIGTERM, leave at once with status 0 (a handler that
    shuts down cleanly when told to)."""

    def handle(self) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
        self.wfile.write(b"%d\n" % os.getpid())
        self.wfile.flush()
        self.rfile.readline()


class VersionHandler(socketserver.StreamRequestHandler):
    """Answer one line with the version of the supervisor code it runs with, and its pid."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(f"{supervisor.__version__} {os.getpid()}\n".encode())


class VersionDatagramHandler(socketserver.DatagramRequestHandler):
    """Answer each datagram with its data, the supervisor's version and the pid."""

    def handle(self) -> None:
        data = self.rfile.read()
        self.wfile.write(data + f" {supervisor.__version__} {os.getpid()}".encode())

"""A standard-library contender: `python bench/stdlib_server.py KIND [BACKLOG]`.

KIND is `forking` (socketserver.ForkingTCPServer), `threading` (ThreadingTCPServer) or `plain`
(TCPServer), serving bench.handler.Handler on 127.0.0.1 with an ephemeral port. BACKLOG is the
listen queue (request_queue_size); without it the standard library's default of 5 is kept, as
an application that does not set it gets. Prints "listening on PORT" on stdout once bound, then
serves until killed (the harness stops it with SIGTERM to its process group).
"""

import signal
import socketserver
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.handler import Handler

KINDS: dict[str, type[socketserver.TCPServer]] = {
    "forking": socketserver.ForkingTCPServer,
    "threading": socketserver.ThreadingTCPServer,
    "plain": socketserver.TCPServer,
}


def main() -> None:
    kind = KINDS[sys.argv[1]]
    backlog = int(sys.argv[2]) if len(sys.argv) > 2 else kind.request_queue_size

    class Server(kind):  # type: ignore[valid-type,misc]
        request_queue_size = backlog
        allow_reuse_address = True
        daemon_threads = True

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Server(("127.0.0.1", 0), Handler) as server:
        print(f"listening on {server.server_address[1]}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

"""A standard-library WSGI contender: `python bench/wsgi_server.py KIND [BACKLOG]`.

KIND is `plain` (wsgiref's `WSGIServer`: one request at a time), `threading` (`ThreadingMixIn`
+ `WSGIServer`) or `forking` (`ForkingMixIn` + `WSGIServer`), running bench.hosted_apps's
application with its quiet handler on 127.0.0.1 with an ephemeral port, by `serve_forever()`.
BACKLOG is the listen queue (request_queue_size); without it the standard library's default of
5 is kept, as an application that does not set it gets. Prints "listening on PORT" on stdout
once bound, then serves until killed (the harness stops it with SIGTERM to its process group).
"""

import signal
import socketserver
import sys
from pathlib import Path
from wsgiref.simple_server import WSGIServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.hosted_apps import QuietWSGIHandler, application


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class ForkingWSGIServer(socketserver.ForkingMixIn, WSGIServer):
    pass


KINDS: dict[str, type[WSGIServer]] = {
    "plain": WSGIServer,
    "threading": ThreadingWSGIServer,
    "forking": ForkingWSGIServer,
}


def main() -> None:
    kind = KINDS[sys.argv[1]]
    backlog = int(sys.argv[2]) if len(sys.argv) > 2 else kind.request_queue_size

    class Server(kind):  # type: ignore[valid-type,misc]
        request_queue_size = backlog

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Server(("127.0.0.1", 0), QuietWSGIHandler) as server:
        server.set_app(application)
        print(f"listening on {server.server_address[1]}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

"""What the supervisor shows of itself: `status`, systemd's STATUS= line, /metrics and /healthz.

Everything here reads the supervisor's state through `Observed` (the supervisor implements it;
this module never imports it); a scrape first has the workers' reports read (`collect`).
"""

import json
import logging
import os
import time
from collections.abc import Callable, Generator
from functools import partial
from typing import Any, Protocol, TypeVar

from supervisor import control, exposition, logs, systemd
from supervisor.children import Child
from supervisor.config import Config
from supervisor.exporter import HttpServer, Request, Response
from supervisor.loop import Loop, Timer
from supervisor.metrics import Watched
from supervisor.modes import Modes
from supervisor.modes.base import Mode
from supervisor.reload import ReloadResult, Reloads
from supervisor.responder import Later
from supervisor.scrapes import Body, Scrapes, Variant
from supervisor.server import Server
from supervisor.sockets import Listener

log = logging.getLogger("supervisor")

# the answer when a step of /metrics or /healthz raised (the loop has logged and counted it)
_ERROR = Response(500, "Internal Server Error", "text/plain; charset=utf-8", b"see the log\n")

STATUS_EVERY = 1.0  # seconds: systemd's STATUS= is sent at most this often
STATUS_GROUP = 25  # servers (or children) a step of `status` or /healthz reads: about 0.2 ms
T = TypeVar("T")


class Observed(Watched, Protocol):
    """What `status`, the summary and the endpoints read of the supervisor."""

    config: Config
    config_path: str
    started: float
    active: int
    reloads: Reloads
    draining: set[Server]

    modes: Modes

    @property
    def state_name(self) -> str: ...
    def collect(self) -> None: ...
    def reload(self) -> ReloadResult: ...
    def upgrade(self, reply: Later | None = None) -> None: ...


def answer(observed: Observed, command: str) -> dict[str, Any] | Later:
    """The control socket's answer to `command` (a status once its steps are done, an
    upgrade's once it is)."""
    if command == "status":
        later = Later()
        give_error = partial(later.give, control.INTERNAL_ERROR)
        observed.loop.start_job("status", status(observed), later.give, give_error)
        return later
    if command == "reload":
        result = observed.reload()
        return {"ok": result.ok, "message": result.message, "exit_status": result.exit_status}
    if command == "upgrade":
        later = Later()
        observed.upgrade(later)
        return later
    return {"ok": False, "error": f"unknown command {command!r}"}


def log_listening(server: Server, mode: Mode) -> None:
    """Say that `server` (new, or on a new socket) is listening, and how it runs."""
    limit = f", max_children={server.config.max_children}" if mode.limited else ""
    if not mode.listens:
        limit = f", workers={server.config.workers}{limit}"
    log.info(
        "%s: listening on %s (%s%s, %s %s%s)",
        server.name,
        server.listener.bound,
        # (its backlog is the service manager's Backlog=, not the configured one)
        "inherited from systemd, " if server.listener.inherited else "",
        server.mode,
        server.config.code_key,
        server.config.code,
        limit,
        extra=logs.about(server.name),
    )


def summary(observed: Observed) -> str:
    """A one-line state for systemd's STATUS=: requests in progress are fork children and busy
    threads (a prefork worker's own requests are in its server's metrics), apart from the
    prefork workers themselves."""
    workers = sum(mode.workers() for mode in observed.modes)
    requests = observed.active - workers
    text = f"{len(observed.servers)} servers, {requests} request{'' if requests == 1 else 's'}"
    text += " in progress"
    if workers:
        text += f", {workers} prefork workers"
    last = observed.reloads.last
    if last is not None:
        text += f"; last reload {'ok' if last.ok else f'failed: {last.message}'}"
    return " ".join(text.split())  # one line: a newline would start another sd_notify field


class StatusUpdates:
    """Keeps systemd's STATUS= current as the numbers change: `changed()` sends the summary at
    once after a quiet second, else when STATUS_EVERY has passed since the last one (one timer,
    set only while things change: an idle supervisor sends nothing). Nothing before `start()`
    (READY=1 carries the first), nothing at all without NOTIFY_SOCKET."""

    def __init__(self, observed: Observed, loop: Loop) -> None:
        self.enabled = False
        self._observed = observed
        self._loop = loop
        self._timer: Timer | None = None
        self._sent_at = -STATUS_EVERY
        self._sent = ""

    def start(self, sent: str) -> None:
        """READY=1 has gone, with STATUS=`sent`."""
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sent, self._sent_at = sent, time.monotonic()

    def changed(self) -> None:
        if not self.enabled or self._timer is not None:
            return
        wait = self._sent_at + STATUS_EVERY - time.monotonic()
        if wait <= 0:
            self._send()
        else:
            self._timer = self._loop.call_later(wait, self._send)

    def _send(self) -> None:
        self._timer = None
        text = summary(self._observed)
        if text != self._sent:
            self._sent, self._sent_at = text, time.monotonic()
            systemd.notify(f"STATUS={text}")


def status(observed: Observed) -> Generator[None, None, bytes]:
    """The steps of a `supervisor status` answer, which return its JSON line: STATUS_GROUP
    servers or children a step (1,000 servers are 4.5 ms of work)."""
    last = observed.reloads.last
    fields: dict[str, Any] = {
        "ok": True,
        "pid": os.getpid(),
        "state": observed.state_name,
        "config": observed.config_path,
        "started": observed.started,
        "active": observed.active,
        "max_children": observed.config.supervisor.max_children,
        "last_reload": None
        if last is None
        else {"ok": last.ok, "message": last.message, "at": last.at},
    }
    encoded = {key: json.dumps(value) for key, value in fields.items()}
    servers = [*observed.servers.values(), *observed.draining]
    encoded["servers"] = yield from _json_list(servers, _server_status)
    children = list(observed.children)
    encoded["children"] = yield from _json_list(children, _child_status)
    encoded["fork_servers"] = json.dumps([pid for mode in observed.modes for pid in mode.helpers()])
    pairs = (f"{json.dumps(key)}: {value}" for key, value in encoded.items())
    return ("{" + ", ".join(pairs) + "}\n").encode()


def _json_list(
    items: list[T], as_dict: Callable[[T], dict[str, Any]]
) -> Generator[None, None, str]:
    """`items` as a JSON list, STATUS_GROUP of them a step."""
    parts = []
    for start in range(0, len(items), STATUS_GROUP):
        parts.append(
            ", ".join(json.dumps(as_dict(item)) for item in items[start : start + STATUS_GROUP])
        )
        yield
    return "[" + ", ".join(parts) + "]"


def _child_status(child: Child[Server]) -> dict[str, Any]:
    return {"pid": child.pid, "server": child.owner.name}


def _server_status(server: Server) -> dict[str, Any]:
    return {
        "name": server.name,
        "address": str(server.listener.bound),
        "mode": server.mode.value,
        "active": server.active,
        "max_children": server.config.max_children,
        "requests": server.stats.requests,
        "errors": server.stats.errors,
        "rejected": sum(server.stats.rejected.values()),
        "removed": server.retired,
    }


def serve_metrics(observed: Observed, listener: Listener) -> HttpServer:
    """Serve /metrics and /healthz on `listener`, from the loop (/metrics rendered as a job of
    small steps: scrapes.py)."""
    scrapes = Scrapes(observed)

    def scrape(request: Request, respond: Callable[[Response], None]) -> None:
        openmetrics = exposition.wants_openmetrics(request.accept)
        variant = Variant(openmetrics, request.takes_gzip)
        content_type = exposition.OPENMETRICS if openmetrics else exposition.TEXT

        def give(body: Body | None) -> None:
            if body is None:  # a step raised: the loop has logged and counted it
                respond(_ERROR)
            else:
                respond(Response(200, "OK", content_type, body, gzip=variant.gzip))

        scrapes.request(variant, give)

    def health(request: Request, respond: Callable[[Response], None]) -> None:
        observed.loop.start_job("healthz", _health(observed), respond, partial(respond, _ERROR))

    log.info("metrics: listening on %s (/metrics, /healthz)", listener.bound)
    return HttpServer(observed.loop, listener, {"/metrics": scrape, "/healthz": health})


def _health(observed: Observed) -> Generator[None, None, Response]:
    """The steps of a /healthz answer, which return it: STATUS_GROUP servers a step."""
    servers, down = list(observed.servers.values()), []
    for start in range(0, len(servers), STATUS_GROUP):
        down += [server.name for server in servers[start : start + STATUS_GROUP] if not server.up]
        yield
    ok = observed.running and not down
    if ok:
        body = b"ok\n"
    elif not observed.running:
        body = f"{observed.state_name}\n".encode()
    else:
        body = f"down: {' '.join(down)}\n".encode()
    return Response(
        200 if ok else 503,
        "OK" if ok else "Service Unavailable",
        "text/plain; charset=utf-8",
        body,
    )

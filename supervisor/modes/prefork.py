"""Prefork mode: a pool of long-lived workers per server, accepting on its socket themselves.

The workers and their pools are prefork.py's; this is the mode the supervisor calls: a pool for
each prefork server, reopened after every reload with new workers running the new code (the old
ones finish their request and exit), closed when the server leaves prefork mode or is removed.
The supervisor never accepts on a prefork server's socket, and counts its workers, not its
requests, as its children (a fixed set of workers is never "saturated").
"""

import logging
from collections.abc import Callable

from supervisor import logs
from supervisor.children import Reaped
from supervisor.modes.base import Host, Mode, account_exit
from supervisor.prefork import Pool
from supervisor.server import Server

log = logging.getLogger("supervisor")


class Prefork(Mode):
    """Keep each prefork server's workers."""

    listens = False
    saturates = False
    services = False  # (each worker runs its copy's service_actions: prefork.py)

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.pools: dict[Server, Pool] = {}  # (also while a removed server's workers finish)
        host.spawner.on_child(self._close_in_child)

    def start(self, servers: list[Server]) -> None:
        """Give each server new workers (the old ones, if any, finish their request and exit);
        close the pools of servers that are no longer prefork servers."""
        super().start(servers)
        for server in [server for server in self.pools if server not in servers]:
            self.retire(server)  # (it left prefork mode, or was removed)
        if not self.host.running:
            return
        for server in servers:
            pool = self.pools.get(server)
            if pool is None:
                pool = self.pools[server] = Pool(server, self.host.loop, self._spawn)
            else:
                pool.retire_all()
            pool.closed = False
            pool.fill()

    def retire(self, server: Server) -> None:
        """Its workers finish their request and exit; the pool goes with the last of them."""
        pool = self.pools.get(server)
        if pool is not None:
            pool.close()
            self._forget(server)

    def _spawn(self, server: Server, run: Callable[[], int]) -> int | None:
        """A prefork worker, or None if fork failed (logged; the pool backs off)."""
        try:
            pid = self.host.spawner.spawn(server, run, keep_listener=True, keeper=self)
        except OSError as exc:
            log.error(
                "%s: fork failed for a worker (%s)",
                server.name,
                exc.strerror or exc,
                extra=logs.about(server.name),
            )
            return None
        self.host.count(server, +1)
        return pid

    def child_exited(self, reaped: Reaped[Server]) -> None:
        assert reaped.child is not None  # noqa: S101 (the supervisor's own children only)
        server = reaped.child.owner
        account_exit(self.host, reaped.child, reaped, self.debug, request=False)
        pool = self.pools.get(server)
        if pool is not None:
            pool.exited(reaped.pid, reaped.status.ok)
            self._forget(server)

    def _forget(self, server: Server) -> None:
        """Drop a closed pool once its last worker is gone."""
        pool = self.pools.get(server)
        if pool is not None and pool.closed and not pool.workers:
            del self.pools[server]

    def collect(self) -> None:
        for pool in self.pools.values():
            pool.collect_reports()  # what workers have written, even if not read yet

    def workers(self) -> int:
        return sum(len(pool.workers) for pool in self.pools.values())

    def stop(self) -> None:
        for pool in self.pools.values():
            pool.close()  # workers finish their request and exit

    def _close_in_child(self) -> None:
        for pool in self.pools.values():
            pool.close_in_child()

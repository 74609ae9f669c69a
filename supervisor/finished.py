"""Requests whose handler has returned, told before their connection is shut down.

max_per_source counts a request for its client until the request is done. Done must mean
"the handler has returned", not "the child has exited" or "the thread has ended": a client that
waited for the end of its answer connects again at once, and would overtake both. So:

- a forked child writes a DONE record (handling.DONE: its forker's pid or 0, the fork
  server's seq, its own pid) to a pipe just before its connection is shut down; the fork
  server's children inherit the write end as fd 5 (forkserver.DONE_FD);
- a thread appends (server, source) to a deque at the same point.

The loop reads both as they come, and again before it turns a client away for
max_per_source (the supervisor's catch-up), so the news always arrives in time.
"""

import collections
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from supervisor import guards
from supervisor.guards import Source
from supervisor.handling import DONE, write_done


class DonePipe:
    """The pipe forked children write DONE records to (fork mode)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._partial = b""

    def child_done(self) -> None:
        """In a child the supervisor forked: its handler has returned."""
        write_done(self.write_fd, 0, 0)

    def records(self) -> Iterator[tuple[int, int, int]]:
        """The children's DONE records written so far: (forker, seq, pid)."""
        chunks = [self._partial]
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                chunks.append(chunk)
        data = b"".join(chunks)
        whole = len(data) - len(data) % DONE.size
        self._partial = data[whole:]
        return DONE.iter_unpack(data[:whole])

    def close_in_child(self) -> None:
        """In a forked child: only the write end is its (to report on)."""
        os.close(self.read_fd)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class DoneThreads:
    """The deque request threads report on (thread mode)."""

    def __init__(self) -> None:
        self._done: collections.deque[tuple[Any, Source]] = collections.deque()

    def for_thread(self, server: Any, source: Source) -> Callable[[], None] | None:
        """What a request's thread calls when its handler has returned (None: no source to
        release). deque.append is atomic: the thread reports, the loop releases."""
        return None if source is None else lambda: self._done.append((server, source))

    def release(self) -> None:
        """Release the sources of the threads' requests that have ended."""
        while self._done:
            server, source = self._done.popleft()
            guards.release(server.sources, source)

"""One thread at a time on an outbound connection's socket.

A :class:`SendLock` is a lock (``acquire``, ``release``, ``with``) whose uncontended
take and give are one C call each, with nothing to parse: the generated send functions
(``generated.py``) take it with :attr:`SendLock.take` and give it back with
``give(True)``.

Why not ``threading.Lock``: its ``acquire`` parses its arguments on every call, and
with many busy processes on few cores every message's code is fetched cache-cold
(``benchmarks/coldpath.py``). Counted with ``valgrind --tool=cachegrind``, a requester's
lock was then the largest single part of what a round trip fetches beyond bare pyzmq.

How: the lock is a :class:`queue.SimpleQueue` (C) holding one token. Taking the token
is ``get_nowait`` (:data:`Busy` when another thread has it); waiting for it is ``get``
with a timeout, which sleeps until a ``put`` gives it back and lets signal handlers
run meanwhile, as ``Lock.acquire`` does.
"""

from __future__ import annotations

import queue
from typing import Any

__all__ = ["Busy", "SendLock"]

#: What :attr:`SendLock.take` raises when another thread holds the lock.
Busy = queue.Empty


class SendLock:
    __slots__ = ("_token", "give", "take")

    def __init__(self) -> None:
        token: queue.SimpleQueue[bool] = queue.SimpleQueue()
        token.put(True)
        self._token = token
        #: Take the lock without waiting; raises :data:`Busy` when it is held.
        self.take = token.get_nowait
        #: Give the lock back: ``give(True)``, only by the thread that took it.
        self.give = token.put_nowait

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """As ``threading.Lock.acquire``: wait at most ``timeout`` seconds (forever
        when negative), or not at all unless ``blocking``; true once it is held."""
        try:
            if not blocking:
                self.take()
            else:
                self._token.get(timeout=None if timeout < 0 else timeout)
        except Busy:
            return False
        return True

    def release(self) -> None:
        if not self._token.empty():
            raise RuntimeError("release of an unlocked SendLock")
        self.give(True)

    def locked(self) -> bool:
        return self._token.empty()

    def __enter__(self) -> SendLock:
        self._token.get()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.give(True)

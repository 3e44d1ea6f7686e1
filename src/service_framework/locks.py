"""The lock around an outbound connection's socket: one C call to take it and two to give
it back when no other thread wants it, handed over in turn when threads queue for it.

``threading.Lock.acquire`` parses its arguments with ``PyArg_ParseTupleAndKeywords`` on
every call, even with none, and that parser's code is a sizeable share of what a
cache-cold request fetches (``benchmarks/coldlines.py``). Here the uncontended path is a
one-item list: taking the lock pops its token (``IndexError`` when another thread holds
it), giving it back appends the token and looks whether anyone waits - all of it atomic
for the interpreter, no parsing, no system call.

A thread that finds the lock taken queues behind a mutex with a lock of its own, and the
holder hands the token to the first one queued when it gives it back: a thread that
sends in a tight loop cannot take the lock back before a waiting thread gets it (with a
plain token it would, each time: the waiter needs the interpreter first to take it).

The order that makes this safe: a giver puts the token back *before* it looks for
waiters, and a waiter looks for the token and queues itself in one step under the
mutex. So either the giver sees the waiter (and hands it the token) or the waiter finds
the token; neither can miss the other.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from .generated import indent

__all__ = ["HandoffLock"]

_TOKEN = True


class HandoffLock:
    """A non-reentrant mutex with ``acquire(blocking=True, timeout=-1)``, ``release()``,
    ``locked()`` and ``with``, as ``threading.Lock``, plus the pieces generated code
    inlines (see :meth:`source`): ``take`` (try to acquire; raises ``IndexError`` when
    the lock is held), ``put`` and ``waiters``/``hand_over`` for the release."""

    __slots__ = ("_mutex", "_token", "put", "take", "waiters")

    def __init__(self) -> None:
        self._token = [_TOKEN]  # the token, while the lock is free
        self.waiters: deque[Any] = deque()  # one held _thread.lock per queued thread
        self._mutex = threading.Lock()
        self.take = self._token.pop
        self.put = self._token.append

    @staticmethod
    def source(name: str, wait: Sequence[str]) -> dict[str, list[str]]:
        """Lines for generated code over the names of :meth:`names`: ``acquire`` takes
        the lock, or runs ``wait`` when another thread holds it (lines that return
        holding it, e.g. ``<name>_acquire()``, or raise); ``release`` gives it back."""
        return {
            "acquire": ["try:", f"    {name}_take()", "except IndexError:", *indent(wait)],
            "release": [
                f"{name}_put(True)",
                f"if {name}_waiters:",
                f"    {name}_hand_over()",
            ],
        }

    def names(self, name: str) -> dict[str, Any]:
        """The objects :meth:`source`'s lines use."""
        return {
            f"{name}_take": self.take,
            f"{name}_put": self.put,
            f"{name}_waiters": self.waiters,
            f"{name}_hand_over": self.hand_over,
            f"{name}_acquire": self.acquire,
        }

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        try:
            self.take()
            return True
        except IndexError:
            if not blocking:
                return False
        return self._wait(timeout)

    def _wait(self, timeout: float) -> bool:
        mine = threading.Lock()
        mine.acquire()
        with self._mutex:
            try:
                self.take()
                return True
            except IndexError:
                self.waiters.append(mine)
        try:
            if mine.acquire(timeout=timeout):
                return True  # handed over: the token is ours
        except BaseException:  # a signal handler raised in the wait
            if not self._leave(mine):
                self.release()  # handed over meanwhile: pass it on, or it is lost
            raise
        return not self._leave(mine)

    def _leave(self, mine: Any) -> bool:
        """Take ``mine`` out of the queue; false when it was handed the token already."""
        with self._mutex:
            try:
                self.waiters.remove(mine)
            except ValueError:
                return False
        return True

    def release(self) -> None:
        if self._token:
            raise RuntimeError("release unlocked lock")
        self.put(_TOKEN)
        if self.waiters:
            self.hand_over()

    def hand_over(self) -> None:
        """Give the token, if it is free, to the thread queued first."""
        with self._mutex:
            if not self.waiters:
                return
            try:
                self.take()
            except IndexError:  # taken meanwhile: that holder's release hands it over
                return
            self.waiters.popleft().release()

    def locked(self) -> bool:
        return not self._token

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<HandoffLock {state}, {len(self.waiters)} waiting>"

"""The lock around an outbound connection's socket (``locks.HandoffLock``): mutual
exclusion in both its forms (methods, and the lines generated sends inline), the
hand-over to a queued thread, timeouts, and no token lost when a wait is interrupted."""

from __future__ import annotations

import signal
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pytest

from conftest import wait_until
from service_framework import locks
from service_framework.generated import build, indent
from service_framework.locks import HandoffLock


def inlined(lock: HandoffLock, body: Callable[[], None]) -> Callable[[], None]:
    """``body`` under ``lock`` in the form generated sends use (HandoffLock.source)."""
    lines = HandoffLock.source("lock", ["lock_acquire()"])
    source = [
        "def f():",
        *indent(lines["acquire"]),
        "    try:",
        "        body()",
        "    finally:",
        *indent(lines["release"], 8),
    ]
    return build(source, {**lock.names("lock"), "body": body}, "test lock", "f")  # type: ignore[no-any-return]


def test_one_holder_at_a_time_in_both_forms() -> None:
    lock = HandoffLock()
    inside: list[int] = []
    overlaps: list[list[int]] = []
    done = {"n": 0}

    def body() -> None:
        inside.append(threading.get_ident())
        time.sleep(0)  # let the others run while this thread holds the lock
        if len(inside) != 1:
            overlaps.append(list(inside))
        done["n"] += 1  # a read-modify-write: only safe under the lock
        inside.pop()

    fast = inlined(lock, body)

    def by_methods() -> None:
        with lock:
            body()

    def worker(call: Callable[[], None]) -> None:
        for _ in range(500):
            call()

    # Daemons, joined against one deadline: a lost hand-over fails the test, not the run.
    threads = [
        threading.Thread(target=worker, args=(f,), daemon=True) for f in (fast, by_methods) * 3
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads)
    assert overlaps == []
    assert done["n"] == 3000
    assert not lock.locked() and not lock.waiters


def test_a_release_hands_the_lock_to_the_thread_queued_first() -> None:
    lock = HandoffLock()
    fast = lock.names("lock")
    lock.take()  # held here
    order: list[str] = []

    def wait(name: str) -> None:
        assert lock.acquire(timeout=10)
        order.append(name)
        lock.release()

    first = threading.Thread(target=wait, args=("first",), daemon=True)
    first.start()
    assert wait_until(lambda: len(lock.waiters) == 1, timeout=10, interval=0.001)
    second = threading.Thread(target=wait, args=("second",), daemon=True)
    second.start()
    assert wait_until(lambda: len(lock.waiters) == 2, timeout=10, interval=0.001)
    # Given back as a generated send does: the first waiter owns it at once, so a thread
    # that goes straight back for it (a tight send loop) cannot take it first.
    exec("\n".join(HandoffLock.source("lock", [])["release"]), dict(fast))
    with pytest.raises(IndexError):
        lock.take()
    assert not lock.acquire(blocking=False)
    first.join(10)
    second.join(10)
    assert order == ["first", "second"]
    assert not lock.locked() and not lock.waiters


def test_a_wait_times_out_and_leaves_the_queue() -> None:
    lock = HandoffLock()
    assert lock.acquire()
    started = time.monotonic()
    assert lock.acquire(timeout=0.05) is False
    assert time.monotonic() - started >= 0.05
    assert not lock.waiters
    assert lock.acquire(blocking=False) is False
    lock.release()
    assert lock.acquire(blocking=False) is True
    lock.release()


def test_releasing_an_unlocked_lock_is_an_error() -> None:
    lock = HandoffLock()
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        lock.release()
    assert lock.acquire(blocking=False)  # still one token, not two
    assert not lock.acquire(blocking=False)


class Interrupted(Exception):
    pass


def test_a_wait_interrupted_by_a_signal_handler_leaves_the_queue() -> None:
    lock = HandoffLock()
    lock.take()
    main = threading.get_ident()

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    def signal_the_waiter() -> None:
        if wait_until(lambda: len(lock.waiters) == 1, timeout=10, interval=0.001):
            signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        signaller = threading.Thread(target=signal_the_waiter, daemon=True)
        signaller.start()
        with pytest.raises(Interrupted):
            lock.acquire(timeout=30)
        signaller.join(10)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not lock.waiters
    assert lock.locked()  # still the first holder's
    lock.release()
    assert lock.acquire(blocking=False)


def test_a_waiter_interrupted_after_the_hand_over_passes_the_lock_on(monkeypatch) -> None:
    lock = HandoffLock()
    lock.take()

    class HandedOverThenInterrupted:
        """The waiter's own lock: while it waits, the holder gives the lock back (handing
        it to this waiter), and then a signal handler raises in the wait."""

        def __init__(self) -> None:
            self.inner = threading.Lock()

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            if not self.inner.acquire(blocking=False):
                lock.release()  # the holder: the token goes to this waiter
                assert not lock.waiters and lock.locked()
                raise Interrupted
            return True

        def release(self) -> None:
            self.inner.release()

    monkeypatch.setattr(locks, "threading", types.SimpleNamespace(Lock=HandedOverThenInterrupted))
    with pytest.raises(Interrupted):
        lock.acquire()
    # The interrupted waiter owned the token; it gave it back rather than lose it.
    assert not lock.locked() and not lock.waiters
    monkeypatch.undo()
    assert lock.acquire(blocking=False)

"""The lock an outbound connection's sends take (``sendlock.py``): it excludes, it waits
and times out as ``threading.Lock`` does, and a give wakes a waiter."""

from __future__ import annotations

import threading
import time

import pytest

from service_framework.sendlock import Busy, SendLock


def test_take_gives_the_lock_once_until_it_is_given_back() -> None:
    lock = SendLock()
    lock.take()
    assert lock.locked()
    with pytest.raises(Busy):
        lock.take()
    assert not lock.acquire(blocking=False)
    lock.give(True)
    assert not lock.locked()
    assert lock.acquire(blocking=False)
    lock.release()


def test_a_waiter_times_out_while_another_thread_holds_it() -> None:
    lock = SendLock()
    lock.take()
    started = time.monotonic()
    assert not lock.acquire(timeout=0.05)
    assert time.monotonic() - started >= 0.05
    assert not lock.acquire(timeout=0)
    lock.give(True)


def test_a_give_wakes_the_thread_waiting_for_the_lock() -> None:
    lock = SendLock()
    lock.take()
    waiting, got = threading.Event(), threading.Event()

    def waiter() -> None:
        waiting.set()
        if lock.acquire(timeout=30):
            got.set()
            lock.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(10)
    assert not got.wait(0.05)  # still held
    lock.give(True)
    thread.join(30)
    assert got.is_set() and not lock.locked()


def test_threads_are_excluded_from_one_another() -> None:
    lock = SendLock()
    inside: list[int] = []
    overlaps: list[int] = []
    start = threading.Barrier(4)

    def worker(n: int) -> None:
        start.wait(10)
        for _ in range(500):
            try:
                lock.take()
            except Busy:
                assert lock.acquire(timeout=30)
            try:
                inside.append(n)
                time.sleep(0)  # lets another thread run while this one holds it
                if len(inside) > 1:
                    overlaps.append(n)
                inside.pop()
            finally:
                lock.give(True)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not overlaps and not lock.locked()


def test_with_holds_it_for_the_block_and_releasing_an_unlocked_one_is_an_error() -> None:
    lock = SendLock()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="unlocked"):
        lock.release()
    assert lock.acquire(blocking=False)  # still one token, not two
    assert not lock.acquire(blocking=False)

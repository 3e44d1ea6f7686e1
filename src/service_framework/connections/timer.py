"""``timer``: calls its handler every ``interval_s`` seconds with ``{}``. No socket.

Creation arguments: ``interval_s`` (required, > 0), ``eager`` (first call when the loop
starts rather than one interval later) and ``jitter_s`` (a random delay of up to that many
seconds added to each tick, so timers of many replicas do not fire in step).

Ticks run in the loop's thread, between messages, through the loop's poll timeout (a
reader with a due time and nothing to poll): no thread per timer, and a handler never
runs concurrently with another handler of the same service. The schedule is fixed at
the loop's start (``start + k * interval_s``); a tick whose time has passed while the
handler (or another one) ran is skipped, not queued - a slow handler never causes a
burst of catch-up calls - and counted in ``stats.skipped``. Each tick starts a new
workflow, so ``to_send`` inside the handler sends ``<new id>_1``, ``<new id>_2``, ...
A handler that raises is logged and counted (``stats.failed``); the timer keeps
ticking. It stops with the loop: no tick runs after a stop was asked.

Inline (``InlineServices``) a timer does not tick: there is no loop to drive it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ModelError
from ..observe import ConnectionStats
from ..workflow import new_workflow_id
from .base import ConnectionEnv, InboundConnection, Reader

__all__ = ["Timer", "TimerStats"]

# Model keys a timer's model must leave empty: its handler always gets {}.
_ARGUMENT_KEYS = (
    "required_arguments",
    "optional_arguments",
    "required_connection_arguments",
    "optional_connection_arguments",
)


@dataclass(slots=True)
class TimerStats(ConnectionStats):
    """A timer's counters: ``received`` counts ticks run, ``handled`` / ``failed`` how
    its handler ended, ``skipped`` the ticks dropped because their time had passed."""

    skipped: int = 0


class Timer(InboundConnection):
    type_name = "timer"
    address_keys = ()
    required_creation_arguments = {"connection_function": Callable, "interval_s": float | int}
    optional_creation_arguments = {"eager": bool, "jitter_s": float | int}
    stats_type = TimerStats
    stats: TimerStats

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        for key in _ARGUMENT_KEYS:
            declared = model.source.get(key)
            if declared:
                names = ", ".join(map(repr, declared))
                raise ModelError(
                    f"{self.where()}: model key {key!r} must be empty for a timer (its "
                    f"handler is called with {{}}), got {names}"
                )
        creation = model.creation_arguments
        self.interval_s = float(creation["interval_s"])
        self.eager = bool(creation.get("eager", False))
        self.jitter_s = float(creation.get("jitter_s", 0) or 0)
        self._first = 0.0  # the time of tick 0
        self._tick = 0  # the index of the next tick
        self._next = math.inf  # when it is due (its schedule time plus its jitter)
        self._deliver = self.one_way_delivery().deliver

    @classmethod
    def prepare(
        cls, creation_arguments: dict[str, Any], namespace: Mapping[str, Any]
    ) -> dict[str, Any]:
        interval = creation_arguments["interval_s"]
        if not interval > 0 or not math.isfinite(interval):
            raise ValueError(
                f"creation argument 'interval_s' must be a positive number of seconds, "
                f"got {interval!r}"
            )
        jitter = creation_arguments.get("jitter_s", 0)
        if not jitter >= 0 or not math.isfinite(jitter):
            raise ValueError(
                f"creation argument 'jitter_s' must be a number of seconds >= 0, got {jitter!r}"
            )
        return super().prepare(creation_arguments, namespace)

    def build_readers(self) -> Sequence[Reader]:
        self._first = time.monotonic() + (0.0 if self.eager else self.interval_s)
        self._tick = 0
        self._schedule()
        return (Reader(self._drain, batch=1, due=self._due),)

    def finish(self, deadline: float) -> None:
        """Nothing has arrived that needs handling: a timer's ticks stop with the loop."""

    def _due(self) -> float:
        return self._next

    def _schedule(self) -> None:
        jitter = random.uniform(0, self.jitter_s) if self.jitter_s else 0.0
        self._next = self._first + self._tick * self.interval_s + jitter

    def _drain(self, max_items: int) -> int:
        """Run the tick that is due, if any; then schedule the first tick still ahead."""
        if time.monotonic() < self._next:
            return 0
        self._deliver({}, new_workflow_id())
        # Ticks whose time passed while this one ran are skipped, not run in a burst.
        behind = (time.monotonic() - self._first) / self.interval_s
        upcoming = max(self._tick + 1, math.floor(behind) + 1)
        if upcoming > self._tick + 1:
            self.observer.count("skipped", upcoming - self._tick - 1)
        self._tick = upcoming
        self._schedule()
        return 1

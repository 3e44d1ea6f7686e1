"""Run one service over sockets: connections, the loop, main mode, signals, shutdown.

Start-up (:meth:`ServiceRuntime.start`): load the module, run the config and model
hooks (``loader.prepare_service``), ``setup_addresses``, create the zmq context (and the
CURVE authenticator), open every connection. :meth:`ServiceRuntime.run` then installs
signal handlers, runs ``init_function``, and either serves (the loop) or runs ``main``
in the foreground while the loop serves inbound connections in a background thread.

Shutdown, on SIGINT/SIGTERM, ``stop()``, or ``main`` returning: the loop stops taking
new messages and finishes (and replies to) the one in flight; what has already arrived
is handled until ``stop_timeout_s`` after the stop was asked, and a replyer answers
the requests still queued then with a ``ServiceStopping`` error; the service's own signal
handler runs; sockets close with a bounded linger; the context terminates under a
watchdog. The first signal restores the default action of SIGINT/SIGTERM, so a second
one ends the process at once, whatever Python is doing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any

import zmq

from . import workflow
from .config import validate_addresses_shape
from .connections import build_connections
from .connections.base import (
    Connection,
    ConnectionEnv,
    InboundConnection,
    OutboundConnection,
    Reader,
    RunState,
    ServeAlone,
)
from .errors import AddressError, HookError, StartupError, UnknownConnectionError
from .loader import PreparedService, call_hook, load_module, prepare_service
from .monitoring import PeerWatch, raise_fd_limit
from .names import NameWatch
from .observe import ConnectionStats, Observer
from .probe import Heartbeat
from .security import Curve
from .workflow import IDLE, FlowScope, current_flow, flow_of

__all__ = ["RunOptions", "ServiceRuntime", "make_to_send"]

LOG = logging.getLogger("service_framework.runtime")

_POLL_MS = 1000  # the polling loop re-checks its flags at least this often (the wake pipe
# wakes it at once)
_REFUSE_MARGIN_S = 2.0  # beyond stop_timeout_s, for refusing queued requests at shutdown


@dataclass(frozen=True)
class RunOptions:
    """How to run a service (everything but the service itself, its config and addresses)."""

    main_mode: bool = False
    min_wait_s: float = 0.0  # minimum pause between loop turns while busy (rate limit)
    install_signals: bool = True  # only possible in the main thread
    curve: Curve | None = None
    stop_timeout_s: float = 10.0  # bound on finishing queued work, from the stop request
    probe_file: str | None = None  # a heartbeat file kept fresh while the loop turns (probe.py)
    # Observers heard next to each connection's stats (observe.py): called once per
    # connection at start-up, returns the observers for it.
    observers: Callable[[Connection], Sequence[Observer]] | None = None


def make_to_send(
    service: str, outbound: Mapping[str, OutboundConnection]
) -> Callable[[str, Any], Any]:
    """The ``to_send(connection_name, args)`` given to handlers, ``main``,
    ``init_function`` and signal handlers.

    It reads ``outbound`` (the runtime's own dict, filled in after this is made) on first
    use of each name and keeps the connection's :meth:`~OutboundConnection.sender`; a
    closure rather than an object with ``__call__``, because every message goes through
    it.
    """
    sends: dict[str, Callable[[Any, str], Any]] = {}
    get_flow = current_flow.get

    def unknown(connection_name: object) -> UnknownConnectionError:
        names = ", ".join(map(repr, sorted(outbound))) or "none"
        return UnknownConnectionError(
            f"{service}: no outbound connection {connection_name!r} (outbound connections: {names})"
        )

    def to_send(connection_name: str, args: Any) -> Any:
        try:
            send = sends[connection_name]
        except KeyError:
            connection = outbound.get(connection_name)
            if connection is None:
                raise unknown(connection_name) from None
            send = sends[connection_name] = connection.sender()
        except TypeError:  # an unhashable name
            raise unknown(connection_name) from None
        # The workflow id (see workflow.outgoing_flow), inline: this runs per message.
        flow = get_flow()
        if flow is None or flow._id is IDLE:
            return send(args, workflow.next_id())  # new_workflow_id(), without its call
        return send(args, flow.next_call_id())

    to_send.__qualname__ = f"to_send of {service}"
    return to_send


class _Interrupted(BaseException):
    """Raised in the main thread by the first signal while ``main``/``init`` runs; it
    unwinds ``main`` (releasing whatever locks its frames hold) before the service's own
    signal handler runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class ServiceRuntime:
    """One service, run over sockets in this process."""

    def __init__(
        self,
        source: str | os.PathLike[str] | ModuleType,
        *,
        config: Mapping[str, Any] | None = None,
        addresses: Mapping[str, Any] | None = None,
        cli_strings: Mapping[str, str] | None = None,
        options: RunOptions | None = None,
    ) -> None:
        self._source = source
        self._config = config
        self._addresses = addresses
        self._cli_strings = cli_strings
        self.options = options or RunOptions()
        self.state = RunState()
        self.prepared: PreparedService | None = None
        self.inbound: dict[str, InboundConnection] = {}
        self.outbound: dict[str, OutboundConnection] = {}
        self.to_send: Callable[[str, Any], Any] | None = None
        self._context: zmq.Context[Any] | None = None
        self._authenticator: Any = None
        self._wake_r, self._wake_w = -1, -1
        self._peers: PeerWatch | None = None
        self._names: NameWatch | None = None
        self._flow = flow_of(IDLE)  # the serving thread's current flow (see FlowScope)
        self._phase = "new"
        self._pending_signal: tuple[int, FrameType | None] | None = None
        self._loop_thread: threading.Thread | None = None
        self._closed = False
        self._stop_asked_at: float | None = None
        # Loop starts and idle wake-ups: with frames received, the heartbeat's progress
        # (probe.py). A serving loop bumps it when it wakes up idle, never per message.
        self._turns = 0

    # ------------------------------------------------------------------ start-up
    @property
    def name(self) -> str:
        return self.prepared.name if self.prepared else "service"

    def start(self) -> None:
        """Everything up to open connections; raises :class:`StartupError` (or a
        ``ValidationError``) with a message naming what is wrong."""
        if self._phase != "new":
            raise RuntimeError("a ServiceRuntime starts once")
        self._phase = "starting"
        module = load_module(self._source)
        prepared = prepare_service(module, config=self._config, cli_strings=self._cli_strings)
        self.prepared = prepared
        addresses = self._setup_addresses(prepared)
        raise_fd_limit()  # every peer costs a descriptor (see monitoring)
        self._context = zmq.Context()
        self._peers = PeerWatch(prepared.name)
        self._names = NameWatch(prepared.name, wake=self._wake)
        try:
            if self.options.curve is not None:
                with signals_blocked():
                    self._authenticator = self.options.curve.start(self._context)
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
            self._open_connections(prepared, addresses)
            gate = self._authenticator
            with signals_blocked():
                self._peers.start(
                    wake_loop=self._wake, tick=None if gate is None else self._check_keys
                )
                self._names.start()
        except BaseException:
            self.close()
            raise
        self._phase = "ready"

    def _check_keys(self) -> None:
        """Runs in the peer-watch thread about once a second: re-read the authorized
        keys; a key gone means its clients must handshake again."""
        gate = self._authenticator
        peers = self._peers
        if gate is not None and peers is not None and gate.reload_if_changed():
            peers.rebind_servers("authorized keys were revoked")

    def _setup_addresses(self, prepared: PreparedService) -> dict[str, dict[str, Any]]:
        service, module = prepared.name, prepared.module
        addresses: Any = self._addresses if self._addresses is not None else {}
        if hasattr(module, "setup_addresses"):
            addresses = call_hook(service, module, "setup_addresses", addresses, prepared.config)
            if not isinstance(addresses, Mapping):
                raise HookError(
                    f"{service}: setup_addresses must return a dict, but returned "
                    f"{type(addresses).__name__}: {addresses!r:.200}"
                )
        shaped = validate_addresses_shape(service, addresses)
        models = prepared.models
        for side, declared in (("in", models.inbound), ("out", models.outbound)):
            for name in shaped[side]:
                if name not in declared:
                    LOG.warning(
                        "%s: addresses give '%s' connection '%s', which the service does not "
                        "declare; ignored",
                        service,
                        side,
                        name,
                    )
            for name, model in declared.items():
                keys = model.kind.address_keys
                if not keys:
                    continue
                entry = shaped[side].get(name)
                if entry is None:
                    raise AddressError(
                        f"{service}: connection '{name}' has no address (add "
                        f"addresses['{side}']['{name}'] = {{'{keys[0]}': 'host:port'}})"
                    )
                for key in keys:
                    if key not in entry:
                        given = ", ".join(map(repr, entry)) or "nothing"
                        raise AddressError(
                            f"{service}: connection '{name}' addresses need key '{key}' "
                            f"(got {given})"
                        )
                allowed = {*keys, "server_public_key"}
                for key in entry:
                    if key not in allowed:
                        raise AddressError(
                            f"{service}: connection '{name}' addresses have unknown key "
                            f"{key!r} (allowed: {', '.join(sorted(allowed))})"
                        )
        return shaped

    def _open_connections(
        self, prepared: PreparedService, addresses: dict[str, dict[str, Any]]
    ) -> None:
        assert self._context is not None
        debug = logging.getLogger("service_framework").isEnabledFor(logging.DEBUG)
        env_log = logging.getLogger(f"service_framework.service.{prepared.name}")
        self.to_send = make_to_send(prepared.name, self.outbound)
        env = ConnectionEnv(
            service=prepared.name,
            config=prepared.config,
            context=self._context,
            to_send=self.to_send,
            curve=self.options.curve,
            observers=self.options.observers,
            monitor=self._peers.add if self._peers is not None else None,
            scope=FlowScope(self._flow),
            debug=debug,
            log=env_log,
            names=self._names,
        )
        inbound, outbound = build_connections(prepared.models, env)
        self.outbound.update(outbound)
        self.inbound.update(inbound)
        for side, group in (("in", self.inbound), ("out", self.outbound)):
            for name, connection in group.items():
                connection.open(addresses[side].get(name, {}))

    def endpoints(self) -> dict[str, dict[str, list[str]]]:
        """The actual endpoints per connection (binding to port 0 picks a free port)."""
        return {
            "in": {n: list(c.endpoints) for n, c in self.inbound.items()},
            "out": {n: list(c.endpoints) for n, c in self.outbound.items()},
        }

    @property
    def loop_wakeups(self) -> int:
        """How often the service loop woke up with nothing to do (plus one per start):
        about ten times a second when idle with one inbound socket, once a second with
        several - never per message, and never in a spin."""
        return self._turns

    def stats(self) -> dict[str, ConnectionStats]:
        return {n: c.stats for n, c in (*self.inbound.items(), *self.outbound.items())}

    # ------------------------------------------------------------------ running
    def run(self, on_ready: Callable[[ServiceRuntime], None] | None = None) -> int:
        """Run until done; returns the process exit code (0 ok, 1 ``main``/``init`` raised).
        Always closes everything it opened."""
        if self._phase != "ready":
            raise RuntimeError("call start() successfully before run()")
        prepared = self.prepared
        assert prepared is not None and self.to_send is not None
        module, config = prepared.module, prepared.config
        installed = self._install_signals()
        code = 0
        heartbeat: Heartbeat | None = None
        try:
            self._phase = "init"
            if hasattr(module, "init_function"):
                module.init_function(self.to_send, config)
            # From here until main or the loop starts, a signal takes the graceful path
            # (stop, then the handler) rather than unwinding half-done start-up steps.
            self._phase = "ready"
            LOG.info("%s: ready%s", prepared.name, _describe_endpoints(self.endpoints()))
            if on_ready is not None:
                on_ready(self)
            heartbeat = self._start_heartbeat()
            if self.options.main_mode:
                if not hasattr(module, "main"):
                    raise StartupError(f"{prepared.name}: main mode needs a main(to_send, config)")
                self._loop_thread = threading.Thread(
                    target=self._serve_safely, name=f"{prepared.name}-loop", daemon=True
                )
                with signals_blocked():
                    self._loop_thread.start()
                self._phase = "main"
                if self._pending_signal is not None:  # signalled before main could start
                    raise _Interrupted(self._pending_signal[0])
                module.main(self.to_send, config)
            elif self.inbound:
                self._phase = "loop"
                self._serve()
            else:
                LOG.info(
                    "%s: no inbound connections and not in main mode; nothing to serve",
                    prepared.name,
                )
        except _Interrupted as interrupted:
            # In main mode, main did not return: say so, as a shell would for a process
            # the signal ended. A served loop interrupted in init_function just stopped.
            code = 128 + interrupted.signum if self.options.main_mode else 0
            self._run_pending_signal_handler()
        except Exception:
            where = {"main": "main", "init": "init_function", "ready": "start-up"}.get(
                self._phase, "service loop"
            )
            LOG.exception("%s: %s raised; stopping", prepared.name, where)
            code = 1
        finally:
            self._phase = "stopping"
            if heartbeat is not None:
                heartbeat.stop()
            self._shutdown()
            if installed:
                self._restore_signals(installed)
        return code

    def _serve_safely(self) -> None:
        try:
            self._serve()
        except Exception:  # pragma: no cover - the loop itself catches handler errors
            LOG.exception("%s: service loop failed", self.name)

    def _serve(self) -> None:
        readers = [reader for conn in self.inbound.values() for reader in conn.readers()]
        # Handlers in this thread run under the connections' shared flow (see FlowScope).
        token = current_flow.set(self._flow)
        self._turns += 1
        try:
            # An inbound socket connected to a host name needs the polling loop: the
            # resolver wakes it to apply address changes in this thread.
            names_in_loop = self._names is not None and self._names.in_loop
            serve_alone = readers[0].serve_alone if len(readers) == 1 else None
            if serve_alone is not None and not self.options.min_wait_s and not names_in_loop:
                self._serve_one(readers[0], serve_alone)
            else:
                self._serve_many(readers)
            # Stopped taking new work; handle (and answer) what has already arrived, for
            # what is left of stop_timeout_s since the stop was asked (a replyer refuses
            # whatever is still queued then, so no caller is left to time out).
            asked = self._stop_asked_at if self._stop_asked_at is not None else time.monotonic()
            deadline = asked + self.options.stop_timeout_s
            for connection in self.inbound.values():
                try:
                    connection.finish(deadline)
                except Exception:  # pragma: no cover - shutdown must go on
                    LOG.exception(
                        "%s: finishing connection '%s' failed", self.name, connection.name
                    )
        finally:
            current_flow.reset(token)

    def _serve_one(self, reader: Reader, serve_alone: ServeAlone) -> None:
        """The common case, one inbound socket: the reader's own blocking loop, as a bare
        loop would (a poll per message would double the system calls)."""
        peers = self._peers

        def idle() -> None:
            self._turns += 1  # idle, off the message path
            # Between receive timeouts, not per message: socket repairs the peer watch
            # asked for (see monitoring).
            if peers is not None and peers.repairs_pending:
                peers.run_repairs()

        serve_alone(self.state, idle)

    def _serve_many(self, readers: list[Reader]) -> None:
        """Several readers (or a pause between turns, or a reader without a blocking loop):
        poll what they offer, drain up to each ready reader's batch, and drain the readers
        whose due time has passed; a stop request wakes the poll at once."""
        poller = zmq.Poller()
        by_pollable: dict[Any, Reader] = {}
        for reader in readers:
            if reader.pollable is not None:
                poller.register(reader.pollable, zmq.POLLIN)
                by_pollable[reader.pollable] = reader
        timed = [reader for reader in readers if reader.due is not None]
        wake = self._wake_r
        poller.register(wake, zmq.POLLIN)
        # The pause between turns (-wt) waits on the wake pipe alone: built once here.
        pause = zmq.Poller()
        pause.register(wake, zmq.POLLIN)
        state = self.state
        min_wait = self.options.min_wait_s
        started = 0.0
        timeout = _POLL_MS
        while not state.stopping:
            if min_wait:
                started = time.monotonic()
            if timed:
                timeout = self._drain_due(timed)
                if state.stopped():
                    break
            ready: list[tuple[Any, int]] = poller.poll(timeout)
            if not ready:
                self._turns += 1  # an idle wake-up
            for pollable, _ in ready:
                if pollable == wake:
                    self._drain_wake()
                    continue
                reader = by_pollable[pollable]
                reader.drain(reader.batch)
                if state.stopped():  # a handler (or a signal) asked to stop
                    break
            if min_wait and not state.stopping:
                remaining = min_wait - (time.monotonic() - started)
                # Sleep, but wake at once when asked to stop.
                if remaining > 0 and pause.poll(int(remaining * 1000)):
                    self._drain_wake()

    def _drain_due(self, timed: list[Reader]) -> int:
        """Drain the readers whose due time has passed; the poll timeout (ms) until the
        next one is due, at most ``_POLL_MS``. Runs once per turn, only for services with
        such readers (timers)."""
        wait_s = _POLL_MS / 1000
        now = time.monotonic()
        for reader in timed:
            assert reader.due is not None
            left = reader.due() - now
            if left <= 0:
                reader.drain(reader.batch)
                if self.state.stopping:
                    return 0
                now = time.monotonic()
                left = reader.due() - now
            wait_s = min(wait_s, left)
        # Rounded up: a poll that returned a fraction of a millisecond early would
        # otherwise spin until the due time.
        return max(0, math.ceil(wait_s * 1000))

    def _drain_wake(self) -> None:
        """After a wake-up: take the wake bytes, then do in this thread what other threads
        asked of its sockets - repairs from the peer watch (see monitoring), address
        changes from the name watch (see names)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._wake_r, 4096)
        peers = self._peers
        if peers is not None and peers.repairs_pending:
            peers.run_repairs()
        if self._names is not None:
            self._names.apply_pending()

    def _start_heartbeat(self) -> Heartbeat | None:
        """With ``probe_file``: a heartbeat that refreshes the file while frames are
        received or the loop wakes up idle (counts the loop keeps anyway; see probe.py)."""
        if not self.options.probe_file:
            return None
        inbound = list(self.inbound.values())
        watched = self._peers.watched() if self._peers is not None else frozenset()

        def progress() -> int:
            return self._turns + sum(connection.stats.received for connection in inbound)

        def status() -> dict[str, Any]:
            return {
                "connections": {
                    side: {
                        name: {
                            "binds": connection.binding(),
                            "endpoints": list(connection.endpoints),
                            "watched": connection in watched,
                            "peers": connection.stats.peers_connected
                            - connection.stats.peers_disconnected,
                        }
                        for name, connection in group.items()
                    }
                    for side, group in (("in", self.inbound), ("out", self.outbound))
                }
            }

        heartbeat = Heartbeat(self.options.probe_file, self.name, progress, status)
        with signals_blocked():
            heartbeat.start()
        return heartbeat

    # ------------------------------------------------------------------ stopping
    def _wake(self) -> None:
        """Wake the polling loop (thread-safe; also safe from a signal handler)."""
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")

    def stop(self) -> None:
        """Ask the service to stop (thread-safe; also safe from a signal handler)."""
        if self._stop_asked_at is None:
            self._stop_asked_at = time.monotonic()
        self.state.stopping = True
        self._wake()

    def _install_signals(self) -> dict[int, Any]:
        if (
            not self.options.install_signals
            or threading.current_thread() is not threading.main_thread()
        ):
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # From now on SIGINT and SIGTERM have their default action again: a second signal
        # ends the process at once, even while this handler, the user's handler or a
        # blocking C call is still running - no Python code has to run for it.
        for other in (signal.SIGINT, signal.SIGTERM):
            signal.signal(other, signal.SIG_DFL)
        LOG.info("%s: got %s; stopping gracefully", self.name, signal.Signals(signum).name)
        # The service's own handler runs later, outside this signal frame (see
        # _shutdown): it may then use to_send on a connection the interrupted code held.
        self._pending_signal = (signum, frame)
        if self._phase in ("init", "main"):
            # No safe point to wait for: unwind init_function/main now; run() then runs
            # the service's handler while the background loop still serves, and stops.
            raise _Interrupted(signum)
        # In the loop: the message in flight is finished first, then the handler runs.
        self.stop()

    def _run_pending_signal_handler(self) -> None:
        """Run the service's ``sigint_handler``/``sigterm_handler`` for the signal that
        started the stop, once, in ordinary (not signal-handler) context."""
        pending, self._pending_signal = self._pending_signal, None
        prepared = self.prepared
        if pending is None or prepared is None:
            return
        signum, frame = pending
        hook = "sigint_handler" if signum == signal.SIGINT else "sigterm_handler"
        handler = getattr(prepared.module, hook, None)
        if handler is None:
            return
        try:
            handler(signum, frame, self.to_send, prepared.config)
        except Exception:
            LOG.exception("%s: %s raised", prepared.name, hook)

    def _shutdown(self) -> None:
        self.stop()
        thread = self._loop_thread
        if thread is not None and thread is not threading.current_thread():
            # The loop finishes queued work until stop_timeout_s after the stop, then a
            # replyer refuses what is left (at most a second, see Replyer.REFUSE_S).
            thread.join(self.options.stop_timeout_s + _REFUSE_MARGIN_S)
            if thread.is_alive():
                LOG.error(
                    "%s: a handler was still running after %gs; closing anyway",
                    self.name,
                    self.options.stop_timeout_s,
                )
        self._run_pending_signal_handler()
        self._log_stats()
        self.close()

    def _log_stats(self) -> None:
        for name, stats in self.stats().items():
            if stats.received or stats.rejected or stats.failed:
                LOG.info("%s: connection '%s' %s", self.name, name, stats)

    def close(self) -> None:
        """Close every socket and the context. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._names is not None:
            self._names.close()  # before the sockets it may touch close
            self._names = None
        if self._peers is not None:
            self._peers.close()
            self._peers = None
        for connection in (*self.inbound.values(), *self.outbound.values()):
            try:
                connection.close()
            except Exception:  # pragma: no cover - closing must go on
                LOG.exception("%s: closing connection '%s' failed", self.name, connection.name)
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._context is not None:
            _term_with_watchdog(self._context, self.name)
            self._context = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Start threads inside this block: a thread inherits the signal mask of the thread
    that creates it, so SIGINT/SIGTERM then only ever reach the main thread. (The kernel
    may hand a process signal to any thread that does not block it; Python runs handlers
    in the main thread only, and only when that thread next runs Python code - which a
    ``main`` blocked in a long wait may not do for a long time.)"""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _describe_endpoints(endpoints: dict[str, dict[str, list[str]]]) -> str:
    parts = [
        f"{name}={','.join(urls)}"
        for side in ("in", "out")
        for name, urls in endpoints[side].items()
        if urls
    ]
    return f" ({'; '.join(parts)})" if parts else ""


def _term_with_watchdog(context: zmq.Context[Any], service: str, timeout_s: float = 5.0) -> None:
    """``ctx.term()`` blocks until every socket is closed and flushed; never let that
    hang the process (pyzmq's own tests use the same watchdog)."""
    thread = threading.Thread(target=context.term, name=f"{service}-term", daemon=True)
    with signals_blocked():
        thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        LOG.error(
            "%s: zmq context did not terminate within %gs; exiting anyway", service, timeout_s
        )

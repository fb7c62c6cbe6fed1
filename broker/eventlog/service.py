"""The event log process: one loop that ingests from the broker, trims, and answers log requests.

One thread: each turn drains what the broker delivered into one transaction, then answers the
requests waiting on the ROUTER endpoint, then trims if retention is due. Ingestion never waits
on a reader; a large receive queue absorbs a long reply.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zmq

from broker.envelope import split_envelope
from broker.security import Authenticator, ServerKeys, secure_server
from broker.eventlog.query import LogQueries
from broker.eventlog.store import EventStore, db_path
from broker.eventlog.writer import DEFAULT_RCVHWM, LogWriter
from broker.sockets import bind
from schemas.endpoints import Endpoints
from sdk.transport import configure_context

log = logging.getLogger("pryxbus.eventlog")

_NOBLOCK = int(zmq.NOBLOCK)

MAX_REQUEST_SIZE = 64 * 1024 * 1024
"""Largest log request in bytes (imports carry whole sessions); ZeroMQ disconnects a bigger one."""
UNPACK_LIMITS = {
    "max_str_len": MAX_REQUEST_SIZE,
    "max_bin_len": MAX_REQUEST_SIZE,
    "max_array_len": 4_000_000,
    "max_map_len": 4_000_000,
}
"""msgpack limits for decoding a request (untrusted input): no container over a few million items."""
MAX_REQUEST_CONTAINERS = 50_000
"""Arrays and maps in one request (an import of 2,000 events has 2,002). Without a bound, a 64 MiB
request of empty arrays (one byte each) decodes to ~4 GB of Python lists; with it, a request costs
at most about ten times its size."""


MAX_PENDING_REQUESTS = 10_000
"""Requests read ahead of their answers (one per client: REQ clients ask one at a time)."""


class _TooManyContainers(ValueError):
    pass


def _decode_request(data: bytes) -> object:
    """A request decoded within UNPACK_LIMITS and MAX_REQUEST_CONTAINERS.

    Raises:
        _TooManyContainers, or whatever msgpack raises for data that is not one msgpack value.
    """
    left = MAX_REQUEST_CONTAINERS

    def count(container: object) -> object:
        nonlocal left
        left -= 1
        if left < 0:
            raise _TooManyContainers(f"more than {MAX_REQUEST_CONTAINERS} arrays and maps in one request")
        return container

    return msgpack.unpackb(
        data, raw=False, strict_map_key=False, list_hook=count, object_hook=count, **UNPACK_LIMITS
    )


@dataclass(frozen=True)
class EventLogConfig:
    """Tunables of the event log; counts in events, times in seconds."""

    home: Path
    endpoints: Endpoints
    retain_events: int | None = None
    """Keep at most this many events (the newest); None keeps all."""
    retain_seconds: float | None = None
    """Drop events older than this (by publisher timestamp, from the oldest version on)."""
    retain_interval: float = 1.0
    """How often retention runs."""
    curve: ServerKeys | None = None
    """CURVE keys (``--curve``): the log endpoint is a CURVE server behind a ZAP allow-list, and
    the log subscribes to the broker with the home's client keypair."""
    rcvhwm: int = DEFAULT_RCVHWM
    synchronous: str = "NORMAL"


class EventLog:
    """The log's sockets, store and loop. A context manager; ``run()`` until ``stop()``."""

    def __init__(self, config: EventLogConfig) -> None:
        self.config = config
        self._running = False
        self._stop_requested = False
        """stop() was called: await_broker() gives up and a run() that starts afterwards returns."""
        self._pending: deque[list[bytes]] = deque()
        self._ctx = configure_context(zmq.Context(), config.endpoints)
        self.store: EventStore | None = None
        self.writer: LogWriter | None = None
        self._auth: Authenticator | None = None
        try:
            if config.curve is not None:  # before anything binds: fail closed
                self._auth = Authenticator(self._ctx, config.curve)
            self.store = EventStore(db_path(config.home), synchronous=config.synchronous)
            self.writer = LogWriter(
                self._ctx, self.store, config.endpoints.log_feed or config.endpoints.subscribe, rcvhwm=config.rcvhwm,
                curve=config.curve.client if config.curve is not None else None,
            )
            self.router = self._ctx.socket(zmq.ROUTER)
            self.router.linger = 0
            self.router.maxmsgsize = MAX_REQUEST_SIZE
            if config.curve is not None:
                secure_server(self.router, config.curve)
            self.endpoints = config.endpoints.with_(log=bind(self.router, config.endpoints.log))
            """The endpoints, with the port the system chose for a log endpoint ``tcp://HOST:0``."""
        except BaseException:
            self.close()
            raise
        self.queries = LogQueries(
            self.store,
            self.writer,
            {"events": config.retain_events, "seconds": config.retain_seconds},
        )
        if self._auth is not None:
            auth = self._auth
            self.queries.curve_refused = lambda: auth.refused

    def await_broker(self, timeout: float) -> bool:
        """Block until the broker confirms our subscription (True), or ``stop()`` is called (False).

        Raises:
            TimeoutError: the broker did not confirm it within ``timeout`` seconds.
        """
        assert self.writer is not None
        return self.writer.await_live(timeout, stopped=lambda: self._stop_requested)

    def stop(self) -> None:
        """Ask ``run()`` (or ``await_broker()``) to return soon (safe from a signal handler)."""
        self._stop_requested = True
        self._running = False

    def run(self, poll_interval: float = 0.1) -> None:
        assert self.writer is not None
        writer, router = self.writer, self.router
        poller = zmq.Poller()
        for sock in (writer.sock, writer.monitor, router):
            poller.register(sock, zmq.POLLIN)
        timeout_ms = int(poll_interval * 1000)
        next_trim = time.monotonic()
        retaining = self.config.retain_events is not None or self.config.retain_seconds is not None
        self._running = not self._stop_requested
        reading = True
        while self._running:
            if reading != (writer.retry_at is None):  # a refused batch: read nothing until it is written
                reading = not reading
                if reading:
                    poller.register(writer.sock, zmq.POLLIN)
                else:
                    poller.unregister(writer.sock)
            try:
                ready = dict(poller.poll(0 if self._pending else timeout_ms))
            except zmq.ZMQError as e:
                if e.errno == zmq.EINTR:
                    continue
                raise
            if writer.monitor in ready:
                writer.handle_monitor()
            if writer.sock in ready or not reading:
                writer.drain()  # while not reading: retries the refused batch when due
            writer.ack_if_due()
            if router in ready or self._pending:
                self._answer()
            if retaining and time.monotonic() >= next_trim:
                self.trim()
                next_trim = time.monotonic() + self.config.retain_interval
        while writer.retry_at is None and writer.sock.poll(0, zmq.POLLIN):  # keep what already arrived
            writer.drain()
        writer.ack_if_due()

    def trim(self) -> int:
        assert self.store is not None
        n = self.store.trim(keep=self.config.retain_events, max_age=self.config.retain_seconds)
        self.queries.trimmed += n
        return n

    def _read_requests(self) -> None:
        """Queue what the ROUTER holds, until it has nothing more (or MAX_PENDING_REQUESTS wait).

        Done before each reply: reading until EAGAIN lets ZeroMQ take the disconnects of clients
        that have gone, so a reply to one is dropped. Answering straight from a backlog that never
        ran dry, replies to clients that asked for a replay and left stayed allocated in libzmq
        until the queue emptied: 9,000 such clients grew the log to 325 MB of live heap, freed
        only when it went idle (and kept by the allocator as RSS).
        """
        router, pending = self.router, self._pending
        while len(pending) < MAX_PENDING_REQUESTS:
            try:
                pending.append(router.recv_multipart(_NOBLOCK))
            except zmq.Again:
                return

    def _answer(self) -> None:
        router = self.router
        for _ in range(100):
            self._read_requests()  # before each reply: a reply to a client that left is dropped at once
            if not self._pending:
                return
            frames = self._pending.popleft()
            head, body = split_envelope(frames)
            if len(body) != 1:
                self.queries.bad_requests += 1
                reply = {"ok": False, "code": "bad_request", "message": f"expected one request frame, got {len(body)}"}
            else:
                try:
                    msg = _decode_request(body[0])
                except _TooManyContainers as e:
                    self.queries.bad_requests += 1
                    reply = {"ok": False, "code": "bad_request", "message": str(e)}
                except Exception:
                    self.queries.bad_requests += 1
                    reply = {"ok": False, "code": "bad_request", "message": "request is not valid msgpack"}
                else:
                    reply = self.queries.handle(msg)
            router.send_multipart([*head, msgpack.packb(reply, use_bin_type=True)])

    def close(self) -> None:
        """Close sockets, the store and the context; idempotent."""
        if self._ctx.closed:
            return
        if self.writer is not None:
            self.writer.close()
        if self.store is not None:
            self.store.close()
        if self._auth is not None:
            self._auth.close()
        self._ctx.destroy(linger=0)
        for path in self.config.endpoints.with_(
            publish="", subscribe="", control="", sessions="", log_feed=""
        ).ipc_paths():
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

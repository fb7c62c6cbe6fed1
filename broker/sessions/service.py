"""The session service loop: a ROUTER socket in front of a SessionStore, with group commit.

Reads (``get``, ``list``, ``ping``, ``stats``) are answered the moment they arrive, from committed
state, with no transaction machinery. Writes are grouped: a turn that receives a write drains every
request waiting on the socket (up to BATCH), runs the writes in order inside one ``BEGIN IMMEDIATE``
transaction, commits once (one fsync for the whole batch), and only then sends their replies and
hands the ``session:*`` events to ``SessionEvents``, which the loop lets send them after each turn
(``broker/sessions/events.py``). So a write's reply always means "committed", and concurrent
writers share fsyncs instead of queueing for one each.

Replies to ``get`` are remembered until the next write turn (any write clears them all), so a
session read again and again costs a dictionary lookup instead of a SQLite read transaction, the
larger part of a get's cost after a wake-up (docs/performance.md). That is only right
if nothing else writes the file: the CLI holds ``<db>.lock`` for the life of the service, so two
services never share one database, and components reach sessions only through the service.

Every request gets a reply, garbage included (``{ok: false, code, message}``, see
``schemas/sessions.py``); every bad request is counted. Write requests may carry a request id
(``rid``): the reply to a rid is remembered, and a retry of it (Lazy Pirate) gets the same reply
without running twice. For ``rename``, ``touch``, ``delete``, ``restore`` and an id-less ``create``
the successful reply is also written in the same transaction as the change (``write_replies``), so
a retry that reaches the next service, after this one died between its commit and its reply,
still gets it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq

from broker.envelope import split_envelope
from broker.security import Authenticator, ServerKeys, secure_server
from broker.sessions.events import DEFAULT_LINGER, SessionEvents
from sdk.spare_cpu import DEFAULT_SPIN, SpareCpu
from broker.sessions.store import SCHEMA_VERSION, SessionStore, Written
from broker.sockets import bind
from schemas.endpoints import Endpoints
from sdk.transport import configure_context
from schemas.sessions import (
    BAD_REQUEST,
    BUSY,
    INTERNAL,
    MAX_REQUEST_SIZE,
    STORAGE,
    WRITE_OPS,
    ProtocolError,
    check_id,
    check_limit,
    check_offset,
    check_rid,
    check_title,
    decode_cursor,
    error_reply,
    parse_request,
)

log = logging.getLogger("pryxbus.sessions")

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_zsend = zmq.backend.Socket.send  # the compiled send, without pyzmq's Python wrapper

BATCH = 256
"""Requests drained per turn (and so at most per transaction)."""
REPLY_CACHE = 4096
"""Write replies remembered by request id, for retried requests."""
DURABLE_REPLY_OPS = frozenset({"rename", "touch", "delete", "restore"})
"""Writes whose replies are also kept in the database, in the write's transaction, so a retry
after a restart of the service gets the same answer; so is a ``create`` without an ``id`` (its
retry would make a second session). Not a ``create`` with an ``id`` (the SDK's) nor ``ensure``:
their retries are answered the same without it (a create of an id that exists with its title
returns it; an ensure ensures again), and ``create`` is the write whose latency counts most."""
GET_CACHE = 4096
"""Replies to gets remembered until the next write (then all are forgotten)."""


def refused_by_disk(e: sqlite3.OperationalError) -> bool:
    """Whether SQLite failed because the disk would not take a write (full, an I/O error, or the
    file or its file system turned read-only while the service ran)."""
    name = getattr(e, "sqlite_errorname", "")
    return name.startswith(("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY")) or "disk" in str(e).lower()


@dataclass(frozen=True)
class ServiceConfig:
    endpoints: Endpoints
    db_path: Path
    publish_events: bool = True
    busy_timeout: float = 5.0
    """Seconds a write waits for a lock held by another process before answering ``busy``."""
    event_linger: float = DEFAULT_LINGER
    """Seconds a burst of session events may wait to go to the broker together (0: each at once)."""
    spin: float = DEFAULT_SPIN
    """Seconds to busy-poll for the next request after answering, when the last one came sooner
    than that after the answer before it and the machine has a CPU to spare (0: never); see
    ``sdk/spare_cpu.py``."""
    curve: ServerKeys | None = None
    """CURVE keys (``--curve``): the socket is a CURVE server behind a ZAP allow-list, and the
    session events go to the broker with the home's client keypair."""


class _Request:
    """One received request: where the reply goes, the decoded message, and (later) the reply."""

    __slots__ = ("head", "msg", "reply", "written", "rid")

    def __init__(self, head: list[bytes], msg: dict[str, Any] | None, reply: bytes | None) -> None:
        self.head = head
        self.msg = msg
        self.reply = reply
        self.written: Written | None = None
        self.rid: str | bytes | None = None


class SessionService:
    """One session-service process's socket, store and loop. ``run()`` until ``stop()``."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.started = time.time()
        self.counts: Counter[str] = Counter()
        self.busy_seconds = 0.0
        """Time spent answering requests (from the first frame of a turn to its last reply)."""
        self.spin_seconds = 0.0
        """Time spent busy-polling for the next request (``spin``)."""
        self.errors: Counter[str] = Counter()
        self._storage_refused = 0
        """Writes refused in a row because the disk would not take them (logged once, not each)."""
        self._running = False
        self._stop_requested = False
        """stop() was called: a run() that starts afterwards returns at once."""
        self._replies: OrderedDict[str | bytes, bytes] = OrderedDict()
        self._gets: dict[str, bytes] = {}  # session id -> reply, since the last write turn
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self._op_ping,
            "stats": self._op_stats,
            "get": self._op_get,
            "list": self._op_list,
            "create": self._op_create,
            "ensure": self._op_ensure,
            "rename": self._op_rename,
            "touch": self._op_touch,
            "delete": self._op_delete,
            "restore": self._op_restore,
        }
        self.store = SessionStore(config.db_path, busy_timeout=config.busy_timeout)
        self._spare_cpu = SpareCpu() if config.spin > 0 else None
        self.events: SessionEvents | None = None
        self._ctx = configure_context(zmq.Context(), config.endpoints)
        self._auth: Authenticator | None = None
        try:
            if config.curve is not None:  # before the bind: fail closed
                self._auth = Authenticator(self._ctx, config.curve)
            self.sock = self._ctx.socket(zmq.ROUTER)
            self.sock.linger = 0
            self.sock.maxmsgsize = MAX_REQUEST_SIZE
            if config.curve is not None:
                secure_server(self.sock, config.curve)
            self.endpoints = config.endpoints.with_(sessions=bind(self.sock, config.endpoints.sessions))
            """The endpoints, with the port the system chose for a sessions endpoint ``tcp://HOST:0``."""
        except BaseException:
            if self._auth is not None:
                self._auth.close()
            self._ctx.destroy(linger=0)
            self.store.close()
            if self._spare_cpu is not None:
                self._spare_cpu.close()
            raise
        if config.publish_events:
            self.events = SessionEvents(
                self._ctx,
                config.endpoints,
                linger=config.event_linger,
                curve=config.curve.client if config.curve is not None else None,
            )

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> SessionService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Ask ``run()`` to return at its next turn, or at once if it has not started (safe from a
        signal handler)."""
        self._stop_requested = True
        self._running = False

    def close(self) -> None:
        """Close the socket, publish queued events, close the store; idempotent."""
        if self._ctx.closed:
            return
        if self.events is not None:
            self.events.close()  # before the context goes: its queued events may still leave
        if self._auth is not None:
            self._auth.close()
        self._ctx.destroy(linger=0)
        endpoint = self.config.endpoints.sessions
        if endpoint.startswith("ipc://"):
            Path(endpoint[len("ipc://") :]).unlink(missing_ok=True)
        self.store.close()
        if self._spare_cpu is not None:
            self._spare_cpu.close()

    # -- the loop ----------------------------------------------------------------------------

    def run(self, poll_interval: float = 0.1) -> None:
        """Answer requests until ``stop()``."""
        self._running = not self._stop_requested
        sock, events, spin = self.sock, self.events, self.config.spin
        spare = self._spare_cpu.spare if self._spare_cpu is not None else None
        # A blocking recv with a timeout costs less than a poll per request (no Poller object);
        # while session events are held, the timeout is when they are due.
        idle_ms = timeout_ms = sock.rcvtimeo = int(poll_interval * 1000)
        recv, getsockopt = sock.recv, sock.getsockopt
        monotonic, perf_counter = time.monotonic, time.perf_counter
        answered, gap = float("-inf"), float("inf")  # the last turn's end; the wait for the next request
        while self._running:
            try:
                first = recv()
            except zmq.Again:
                first = None
            else:
                started = perf_counter()
                gap = started - answered
                batch = self._drain(first)
                if batch:
                    self._handle(batch)
                self.busy_seconds += perf_counter() - started  # service time, for stats/top
            if events is not None:
                due = events.send_due(monotonic())
                wanted = idle_ms if due is None else min(idle_ms, 1 + int(due * 1000))
                if wanted != timeout_ms:
                    sock.rcvtimeo = timeout_ms = wanted
            if first is None:
                continue
            answered = perf_counter()
            if spare is not None and gap < spin and spare(answered):
                # Requests are coming back to back (a client in a loop) and a CPU would otherwise
                # sit idle: busy-poll for the next one before sleeping, which spares the wake-up of
                # a sleeping thread (tens of microseconds on a virtual CPU that halts when idle).
                # Sporadic requests never spin, nor does anything while the machine is busy.
                deadline = answered + spin
                while not getsockopt(_EVENTS) & _POLLIN and perf_counter() < deadline:
                    pass
                self.spin_seconds += perf_counter() - answered

    def _drain(self, first: bytes) -> list[_Request]:
        """The requests from the first write on, among this one and the others waiting (at most BATCH).

        Reads ahead of any write, and garbage, are answered in place; reads behind a write join the
        batch (run after it in its transaction, answered after the commit, as a pipelining DEALER
        expects). Draining goes on only while a write waits for its commit (to group more writes
        into it); a lone read goes straight back to the blocking recv.
        """
        sock = self.sock
        recv, getsockopt = sock.recv, sock.getsockopt
        batch: list[_Request] = []
        identity = first
        for turn in range(1, BATCH + 1):
            # A ROUTER always puts the peer's identity first, so more frames follow it. A Frame's
            # ``more`` is free where getsockopt(RCVMORE) costs ~0.5 us, twice per request.
            frames = [identity]
            while True:
                frame = recv(_NOBLOCK, False)
                frames.append(frame.bytes)
                if not frame.more:
                    break
            # REQ sends [empty delimiter, request]; the ROUTER put the peer's identity in front.
            if len(frames) == 3 and not frames[1]:
                head, body = frames[:2], frames[2:]
            else:
                head, body = split_envelope(frames)
            if len(body) != 1:
                self._send(head, self._error(BAD_REQUEST, f"expected one request frame, got {len(body)}"))
            else:
                try:
                    msg = parse_request(body[0])
                except ProtocolError as e:
                    self._send(head, self._error(e.code, e.message))
                else:
                    if batch or msg["op"] in WRITE_OPS:  # a read behind a write sees it, as sent
                        batch.append(_Request(head, msg, None))
                    else:
                        self._send(head, self._read(msg))
            if not batch:
                break  # nothing waits for a commit: the next request comes through the blocking recv
            if turn == BATCH:
                break  # full: the next request waits for the next turn (its identity not yet read)
            if not getsockopt(_EVENTS) & _POLLIN:  # cheaper than a recv that raises Again
                break
            try:
                identity = recv(_NOBLOCK)
            except zmq.Again:
                break
        return batch

    def _read(self, msg: dict[str, Any]) -> bytes:
        """The reply to a read, from committed state (no transaction; gets are remembered)."""
        op = msg["op"]
        self.counts[op] += 1
        session_id = msg.get("id") if op == "get" else None
        if type(session_id) is str:
            reply = self._gets.get(session_id)
            if reply is not None:
                return reply
        try:
            reply = self._pack({"ok": True, "result": self._handlers[op](msg)})
        except ProtocolError as e:  # for a get: not found, a bad id (not remembered)
            return self._error(e.code, e.message)
        except Exception as e:
            return self._failure(e)
        if type(session_id) is str:
            if len(self._gets) >= GET_CACHE:
                self._gets.clear()
            self._gets[session_id] = reply
        return reply

    def _handle(self, batch: list[_Request]) -> None:
        """Run a batch; if it writes, in one transaction; reply only after the commit."""
        writes = any(r.msg["op"] in WRITE_OPS for r in batch)  # type: ignore[index]
        if writes:
            self._gets.clear()  # whatever this turn changes, no remembered get outlives it
        try:
            if writes:
                with self.store.transaction():
                    self._run_all(batch)
                self.counts["commits"] += 1
                if self._storage_refused:
                    log.warning("the session database accepts writes again after %d refused", self._storage_refused)
                    self._storage_refused = 0
            else:
                self._run_all(batch)
        except Exception as e:
            if len(batch) > 1:  # let the request that failed fail alone
                for request in batch:
                    request.reply, request.written, request.rid = None, None, None
                    self._handle([request])
                return
            for request in batch:
                request.written = None
                request.reply = self._failure(e)
        self.counts["batches"] += 1
        for request in batch:
            if request.rid is not None:
                self._remember(request.rid, request.reply)  # type: ignore[arg-type]
            self._send(request.head, request.reply)  # type: ignore[arg-type]
            if request.written is not None and request.written.event and self.events is not None:
                self.events.emit(request.written.event, request.written.session)

    def _run_all(self, batch: list[_Request]) -> None:
        seen: dict[str | bytes, _Request] = {}
        for request in batch:
            msg = request.msg
            op = msg["op"]  # type: ignore[index]
            self.counts[op] += 1
            rid, durable = None, False
            if op in WRITE_OPS:
                try:
                    rid = check_rid(msg.get("rid"))  # type: ignore[union-attr]
                except ProtocolError as e:
                    request.reply = self._error(e.code, e.message)
                    continue
                if rid is not None:
                    cached = self._replies.get(rid)
                    if cached is None and rid in seen:  # a retry queued behind its first attempt
                        cached = seen[rid].reply
                    durable = op in DURABLE_REPLY_OPS or (op == "create" and msg.get("id") is None)  # type: ignore[union-attr]
                    if cached is None and durable:  # answered before a restart?
                        cached = self.store.remembered_reply(rid)
                    if cached is not None:
                        self.counts["replayed"] += 1
                        request.reply = cached
                        continue
            try:
                result = self._handlers[op](msg)  # type: ignore[arg-type]
            except ProtocolError as e:
                request.reply = self._error(e.code, e.message)
            else:
                if isinstance(result, Written):
                    request.written = result
                    result = result.session
                request.reply = self._pack({"ok": True, "result": result})
                if rid is not None and durable:
                    self.store.remember_reply(rid, request.reply)  # committed with the change
            if rid is not None:  # remembered after the commit, refusals (e.g. not_found) too
                request.rid = rid
                seen[rid] = request

    def _remember(self, rid: str | bytes, reply: bytes) -> None:
        self._replies[rid] = reply
        if len(self._replies) > REPLY_CACHE:
            self._replies.popitem(last=False)

    def _send(self, head: list[bytes], reply: bytes) -> None:
        sock = self.sock
        try:
            for frame in head:
                _zsend(sock, frame, _SNDMORE)
            _zsend(sock, reply)
        except zmq.ZMQError:
            self.counts["unsendable"] += 1  # the peer is gone; its retry gets the remembered reply

    def _error(self, code: str, message: str) -> bytes:
        self.errors[code] += 1
        return self._pack(error_reply(code, message))

    def _failure(self, e: Exception) -> bytes:
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e).lower():
            return self._error(BUSY, "the session database is locked by another process; nothing changed, retry")
        if isinstance(e, sqlite3.OperationalError) and refused_by_disk(e):
            # A full disk refuses every write until someone makes room: say so once, not with a
            # traceback per request (which, on the same disk, would make things worse).
            if not self._storage_refused:
                log.error("the disk refuses writes to %s (%s); refusing writes until it takes them again",
                          self.config.db_path, e)
            self._storage_refused += 1
            return self._error(STORAGE, f"the disk refused the write ({e}); nothing was changed, retry later")
        log.exception("session request failed")
        return self._error(INTERNAL, f"internal error ({type(e).__name__}); nothing changed")

    # -- operations --------------------------------------------------------------------------

    def _op_ping(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "schema_version": SCHEMA_VERSION}

    def _op_stats(self, msg: dict[str, Any]) -> dict[str, Any]:
        events = self.events
        return {
            "pid": os.getpid(),
            "uptime": time.time() - self.started,
            "sessions": self.store.count(),
            "requests": dict(self.counts),
            "errors": dict(self.errors),
            "busy_seconds": self.busy_seconds,
            "spin_seconds": self.spin_seconds,
            "events_published": events.published if events else 0,
            "events_dropped": events.dropped if events else 0,
            "events_held": events.held if events else 0,
            "db": str(self.config.db_path),
            "schema_version": SCHEMA_VERSION,
            "curve_refused": self._auth.refused if self._auth is not None else 0,
        }

    def _op_get(self, msg: dict[str, Any]) -> dict[str, str]:
        return self.store.get(check_id(msg.get("id")))

    def _op_list(self, msg: dict[str, Any]) -> dict[str, Any]:
        limit = check_limit(msg.get("limit"))
        offset = check_offset(msg.get("offset"))
        raw_cursor = msg.get("cursor")
        if raw_cursor is not None and offset:
            raise ProtocolError(BAD_REQUEST, "give 'cursor' or 'offset', not both")
        cursor = decode_cursor(raw_cursor) if raw_cursor is not None else None
        page = self.store.list(limit, cursor=cursor, offset=offset)
        return {"sessions": page.sessions, "next_cursor": page.next_cursor}

    def _op_create(self, msg: dict[str, Any]) -> Written:
        title = check_title(msg.get("title"))
        session_id = msg.get("id")
        return self.store.create(title, session_id=None if session_id is None else check_id(session_id))

    def _op_ensure(self, msg: dict[str, Any]) -> Written:
        return self.store.ensure(check_id(msg.get("id")), check_title(msg.get("title")))

    def _op_rename(self, msg: dict[str, Any]) -> Written:
        return self.store.rename(check_id(msg.get("id")), check_title(msg.get("title")))

    def _op_touch(self, msg: dict[str, Any]) -> Written:
        return self.store.touch(check_id(msg.get("id")))

    def _op_delete(self, msg: dict[str, Any]) -> Written:
        return self.store.delete(check_id(msg.get("id")))

    def _op_restore(self, msg: dict[str, Any]) -> Written:
        session = msg.get("session")
        if not isinstance(session, dict):
            raise ProtocolError(BAD_REQUEST, "'session' must be a map {id, title, created_at, updated_at}")
        return self.store.restore(session, overwrite=msg.get("overwrite") is True)

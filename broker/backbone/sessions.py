"""The session service on a JetStream key-value bucket (``session-service --store nats-kv``): the
same REQ/REP protocol as the SQLite service (PROTOCOL.md "Session service"), for every home of a
backbone at once.

- Writes are compare-and-swap on the bucket: ``create`` is create-if-absent; ``rename``, ``touch``,
  ``ensure`` and ``delete`` read the session and write at its revision, and read again when another
  writer got there first. Nothing is lost between homes writing the same session.
- ``list`` (by ``updated_at``, then ``id``, descending) reads an index kept from the bucket's own
  stream, which every service follows; ``get`` reads the bucket (from its stream's leader).
- ``session:*`` events come from that same stream, so they follow the write by construction: each
  change (a bucket revision) is published to the bus's stream with ``Nats-Msg-Id`` ``kv:REVISION``,
  so the services of every home together publish it once; a shared cursor (the last revision
  published, moved every :data:`CURSOR_INTERVAL`) lets a restarted service publish what it had not,
  across a ``kill -9`` between write and event. A restore publishes nothing, as in SQLite.

A test hook, ``PRYXBUS_TEST_KV_CRASH`` (:data:`CRASH_ENV`), makes that ``kill -9`` deterministic.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import logging
import os
import re
import signal
import time
import uuid
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import msgpack
import zmq

from broker.backbone import stream as layout
from broker.security import Authenticator, ServerKeys, secure_server
from broker.sockets import bind
from schemas.envelope import encode_body
from schemas.sessions import (
    BAD_REQUEST,
    CONFLICT,
    INTERNAL,
    NOT_FOUND,
    SESSION_EVENTS,
    UNKNOWN_OP,
    ProtocolError,
    check_id,
    check_limit,
    check_offset,
    check_rid,
    check_title,
    decode_cursor,
    encode_cursor,
    error_reply,
    format_ts,
    parse_request,
    parse_ts,
)

log = logging.getLogger("pryxbus.sessions.kv")

CURSOR_KEY = "sessions-evented"
"""In the checkpoint bucket: the last bucket revision whose session event was published."""
HISTORY = 64
"""Revisions the bucket keeps per session (the most JetStream allows): the changes a restarted
service may still have to announce."""
CRASH_ENV = "PRYXBUS_TEST_KV_CRASH"
"""A test hook (tests/test_backbone_sessions.py): ``before-event:ID`` makes the service SIGKILL
itself when it is about to announce a change of session ID (written, not announced);
``after-event:ID`` once it announced it and before it moves the shared cursor. Read once, at start;
unset, nothing happens."""
CURSOR_INTERVAL = 0.2
"""Seconds between two moves of the shared cursor: a service killed in between publishes again the
events of up to that long, which the stream stores once (their ``Nats-Msg-Id``, within its
2-minute duplicate window), instead of a cursor write per change."""
FINAL_MOVE_TIMEOUT = 2.0
"""Seconds a stopping service gives the last move of the cursor."""
REPLY_CACHE = 10_000
CAS_TRIES = 100
SCHEMA_VERSION = 3


def bucket_name(stream: str) -> str:
    return f"pryxbus-{stream}-sessions"


def key_of(session_id: str) -> str:
    """A bucket key for any session id (keys allow only ``[-/_=.A-Za-z0-9]``)."""
    return "s." + base64.urlsafe_b64encode(session_id.encode("utf-8", "surrogatepass")).decode().rstrip("=")


class KvSessionService:
    """One service process: its ROUTER socket, NATS connection and index. ``await run(on_ready)``."""

    def __init__(self, servers: list[str], stream: str, *, endpoint: str, replicas: int = 3,
                 creds: str | None = None, publish_events: bool = True, curve: ServerKeys | None = None) -> None:
        self.servers, self.stream, self.replicas, self.creds = servers, stream, replicas, creds
        self.curve = curve
        """CURVE keys (``--curve``): the socket is a CURVE server behind the home's allow-list."""
        self._auth: Authenticator | None = None
        self.endpoint = endpoint
        self.publish_events = publish_events
        self.subject = layout.subject(stream)
        self.index: dict[str, dict[str, str]] = {}
        self.order: list[tuple[str, str]] = []  # (updated_at, id) ascending, of every live session
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.cas_retries = 0
        self._cursor_at: int | None = None
        """The shared cursor's key revision as this service last read or wrote it (None: unknown)."""
        self._announced = 0  # the last revision this service published the event of
        self._cursor_moved = 0  # ... and moved the shared cursor to
        self.events_published = 0
        self.events_duplicate = 0  # announced already (by another home's service, or by us before a crash)
        self._crash = tuple(os.environ.get(CRASH_ENV, "").partition(":")[::2])
        self.revision = 0  # the bucket stream's last sequence applied to the index
        self._replies: OrderedDict[Any, bytes] = OrderedDict()
        self._last = datetime.now(timezone.utc)
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # the ROUTER may have something to read (_serve)
        self._applied = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.started = time.time()
        self.nc: Any = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, on_ready: Callable[[KvSessionService], None]) -> None:
        import nats
        from nats.js.api import KeyValueConfig, StorageType

        try:
            options: dict[str, Any] = dict(servers=self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                           error_cb=self._nats_error)
            if self.creds:
                options["user_credentials"] = self.creds
            self.nc = await nats.connect(**options)
            self.js = self.nc.jetstream(timeout=5)
            try:
                self.kv = await self.js.key_value(bucket_name(self.stream))
            except Exception:
                self.kv = await self.js.create_key_value(KeyValueConfig(
                    bucket=bucket_name(self.stream), history=HISTORY, replicas=self.replicas, storage=StorageType.FILE))
            try:
                self.marks = await self.js.key_value(layout.checkpoint_bucket(self.stream))
            except Exception:
                self.marks = await self.js.create_key_value(KeyValueConfig(
                    bucket=layout.checkpoint_bucket(self.stream), history=64, replicas=self.replicas,
                    storage=StorageType.FILE))
            self._get_api = f"$JS.API.STREAM.MSG.GET.KV_{bucket_name(self.stream)}"
            self._key_prefix = f"$KV.{bucket_name(self.stream)}."
            await self._follow()
            self._tasks.append(asyncio.create_task(self._keep_cursor()))
            ctx = self.ctx = zmq.Context()
            if self.curve is not None:  # before it binds: fail closed (ZAP runs on the same context)
                self._auth = Authenticator(ctx, self.curve)
            self.sock = ctx.socket(zmq.ROUTER)
            self.sock.linger = 0
            if self.curve is not None:
                secure_server(self.sock, self.curve)
            self.endpoint = bind(self.sock, self.endpoint)
            self._tasks.append(asyncio.create_task(self._serve()))
            on_ready(self)
            await self._stopping.wait()
        finally:
            for task in self._tasks:
                task.cancel()
            if self.nc is not None:
                if self.nc.is_connected:  # a clean stop leaves nothing to publish again
                    try:
                        await asyncio.wait_for(self._move_cursor(), FINAL_MOVE_TIMEOUT)
                    except asyncio.TimeoutError:
                        log.warning("the shared cursor was not moved before the stop: a restarted"
                                    " service publishes up to %d again (stored once)", self._announced)
                await self.nc.close()
            if self._auth is not None:
                self._auth.close()
            if getattr(self, "ctx", None) is not None:
                self.ctx.destroy(linger=0)
                if self.endpoint.startswith("ipc://"):
                    try:
                        os.unlink(self.endpoint[len("ipc://"):])
                    except FileNotFoundError:
                        pass

    async def _nats_error(self, error: Exception) -> None:
        log.warning("nats: %s", error or type(error).__name__)

    # -- the bucket's stream: the index and the events -----------------------------------------

    async def _follow(self) -> None:
        """Follow the bucket's stream from its start (every revision it keeps, in order)."""
        from nats.js.api import DeliverPolicy

        info = await self.js.stream_info(f"KV_{bucket_name(self.stream)}")
        self._catch_up_to = info.state.last_seq
        self._evented = await self._cursor()
        if self._catch_up_to == 0:
            self._applied.set()
        self._watch = await self.js.subscribe(
            f"$KV.{bucket_name(self.stream)}.>", cb=self._apply, ordered_consumer=True, idle_heartbeat=layout.HEARTBEAT,
            deliver_policy=DeliverPolicy.ALL, pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30,
        )
        await self._applied.wait()

    async def _cursor(self) -> int:
        try:
            entry = await self.marks.get(CURSOR_KEY)
        except Exception:
            return 0
        self._cursor_at = entry.revision
        return int(entry.value or 0)

    async def _apply(self, msg: Any) -> None:
        revision = msg.metadata.sequence.stream
        session_id = self._id_of(msg.subject)
        operation = (msg.headers or {}).get("KV-Operation")
        old = self.index.pop(session_id, None)
        if old is not None:
            at = bisect.bisect_left(self.order, (old["updated_at"], old["id"]))
            if at < len(self.order) and self.order[at] == (old["updated_at"], old["id"]):
                del self.order[at]
        session, change = old, None
        if operation not in ("DEL", "PURGE") and msg.data:
            value = msgpack.unpackb(msg.data, raw=False)
            session, change = value["session"], value.get("change")
            if not value.get("gone"):
                self.index[session_id] = session
                bisect.insort(self.order, (session["updated_at"], session["id"]))
        self.revision = revision
        if change is not None and session is not None and revision > self._evented and self.publish_events:
            await self._publish_event(change, session, revision)
        if revision >= self._catch_up_to and not self._applied.is_set():
            self._applied.set()

    def _id_of(self, subject: str) -> str:
        key = subject.split(".", 2)[2]
        b64 = key[2:]
        return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).decode("utf-8", "surrogatepass")

    async def _publish_event(self, change: str, session: dict[str, str], revision: int) -> None:
        topic = SESSION_EVENTS[change].encode()
        body = encode_body(session, source="session-service", session_id=session["id"])
        delay = 0.05
        self._crash_at("before-event", session["id"])
        while True:
            try:
                ack = await self.js.publish(self.subject, layout.pack(topic, body), timeout=5,
                                            headers={layout.MSG_ID: f"kv:{bucket_name(self.stream)}:{revision}"})
                break
            except Exception as e:
                log.warning("session event not published yet (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
        if ack.duplicate:
            self.events_duplicate += 1
        else:
            self.events_published += 1
        self._crash_at("after-event", session["id"])
        self._announced = max(self._announced, revision)

    async def _keep_cursor(self) -> None:
        """Move the shared cursor to what this service announced, every CURSOR_INTERVAL."""
        while True:
            await asyncio.sleep(CURSOR_INTERVAL)
            await self._move_cursor()

    async def _move_cursor(self) -> None:
        announced = self._announced
        if announced > self._cursor_moved:
            try:
                await self._advance_cursor(announced)
            except Exception as e:  # the cluster is away: the next move (or restart) makes up for it
                log.warning("the shared cursor was not moved to %d (%s)", announced, e)
                return
            self._cursor_moved = announced

    def _crash_at(self, point: str, session_id: str) -> None:
        if self._crash == (point, session_id):
            log.warning("%s=%s:%s: killing this service (SIGKILL)", CRASH_ENV, point, session_id)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _advance_cursor(self, revision: int) -> None:
        from nats.js.errors import KeyNotFoundError

        for _ in range(CAS_TRIES):
            try:
                if self._cursor_at is None:  # not known (or another service moved it): read it
                    entry = await self.marks.get(CURSOR_KEY)
                    self._cursor_at = entry.revision
                    if int(entry.value or 0) >= revision:
                        return
                self._cursor_at = await self.marks.update(CURSOR_KEY, str(revision).encode(), last=self._cursor_at)
                return
            except KeyNotFoundError:
                try:
                    self._cursor_at = await self.marks.create(CURSOR_KEY, str(revision).encode())
                    return
                except Exception:
                    continue
            except Exception:
                self._cursor_at = None
                self.cas_retries += 1
                continue
        # Not moved: the caller must not take it as moved (the next move tries again).
        raise RuntimeError(f"the shared cursor was not moved in {CAS_TRIES} tries")

    # -- requests ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Read requests off the ROUTER as its descriptor signals, each answered in a task of its
        own. A plain socket on the loop's reader, not zmq.asyncio: its futures and callbacks
        per message cost about as much as a request's own work here. ZeroMQ's descriptor signals
        a change, not a message, and a send may take that change in: each send wakes this loop
        to look again (``_wake``)."""
        loop = asyncio.get_running_loop()
        sock, wake = self.sock, self._wake
        loop.add_reader(sock.FD, wake.set)
        try:
            while True:
                wake.clear()
                while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    loop.create_task(self._answer(sock.recv_multipart(zmq.NOBLOCK)))
                await wake.wait()
        finally:
            loop.remove_reader(sock.FD)

    async def _answer(self, frames: list[bytes]) -> None:
        *head, body = frames
        try:
            request = parse_request(body)
            op = request["op"]
            self.counts[op] = self.counts.get(op, 0) + 1
            rid = check_rid(request.get("rid")) if op in _WRITES else None
            if rid is not None and rid in self._replies:
                reply = self._replies[rid]
            else:
                handler = _OPS.get(op)
                if handler is None:
                    raise ProtocolError(UNKNOWN_OP, f"unknown op {op!r}")
                result = await handler(self, request)
                reply = msgpack.packb({"ok": True, "result": result}, use_bin_type=True)
                if rid is not None:
                    self._replies[rid] = reply
                    if len(self._replies) > REPLY_CACHE:
                        self._replies.popitem(last=False)
        except ProtocolError as e:
            self.errors[e.code] = self.errors.get(e.code, 0) + 1
            reply = msgpack.packb(error_reply(e.code, e.message), use_bin_type=True)
        except Exception as e:
            log.exception("session request failed")
            self.errors[INTERNAL] = self.errors.get(INTERNAL, 0) + 1
            reply = msgpack.packb(error_reply(INTERNAL, f"internal error ({type(e).__name__}); retry"), use_bin_type=True)
        try:
            self.sock.send_multipart([*head, reply], zmq.NOBLOCK)  # a ROUTER drops, never blocks
        except zmq.ZMQError:
            pass
        self._wake.set()

    def _now(self) -> str:
        """Now, but after the last timestamp this service wrote (``list`` keeps the order of changes)."""
        now = datetime.now(timezone.utc)
        if now <= self._last:
            now = self._last + _TICK
        self._last = now
        return format_ts(now)

    async def _entry(self, session_id: str) -> tuple[dict[str, str] | None, int | None]:
        """(the session or None if deleted, its key's revision or None if it never existed).

        Read from the bucket's stream leader (``STREAM.MSG.GET``, last by subject) and parsed
        here: nats-py's ``kv.get`` spends longer building its entry (the headers through an email
        parser, a datetime per message) than the read takes."""
        subject = self._key_prefix + key_of(session_id)
        response = await self.nc.request(self._get_api, json.dumps({"last_by_subj": subject}).encode(), timeout=5)
        reply = json.loads(response.data)
        error = reply.get("error")
        if error is not None:
            if error.get("code") == 404:  # no message on that subject: a key never written
                return None, None
            raise RuntimeError(f"JetStream refused to read session {session_id!r}: {error.get('description')}")
        message = reply["message"]
        headers = message.get("hdrs")
        if headers and _REMOVED.search(base64.b64decode(headers)):
            return None, None  # deleted with other tools: kv.create takes such a key back
        data = message.get("data")
        if not data:
            return None, message["seq"]
        value = msgpack.unpackb(base64.b64decode(data), raw=False)
        return (None if value.get("gone") else value["session"]), message["seq"]

    async def _put(
        self, session: dict[str, str], change: str | None, revision: int | None, *, gone: bool = False, read: bool = True
    ) -> bool:
        """Write at ``revision`` (None: only if the key never existed); False if another writer got
        there first (the caller reads again). ``read``: the revision was read (a refusal is a race,
        counted in ``cas_retries``), not assumed."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        value = msgpack.packb({"session": session, "change": change, "gone": gone}, use_bin_type=True)
        try:
            if revision is None:
                await self.kv.create(key_of(session["id"]), value)
            else:
                await self.kv.update(key_of(session["id"]), value, last=revision)
            return True
        except (KeyWrongLastSequenceError, KeyNotFoundError):  # nats-py's create, racing, may read a replica behind
            self.cas_retries += read
            return False

    async def _change(self, session_id: str, edit: Callable[[dict[str, str]], dict[str, str]]) -> dict[str, str]:
        for _ in range(CAS_TRIES):
            session, revision = await self._entry(session_id)
            if session is None:
                raise ProtocolError(NOT_FOUND, f"no session with id {session_id!r}")
            changed = edit(dict(session))
            if await self._put(changed, "updated", revision):
                return changed
        raise ProtocolError(CONFLICT, f"session {session_id!r} kept changing; retry")

    async def op_get(self, request: dict[str, Any]) -> dict[str, str]:
        session_id = check_id(request.get("id"))
        session, _ = await self._entry(session_id)
        if session is None:
            raise ProtocolError(NOT_FOUND, f"no session with id {session_id!r}")
        return session

    async def op_create(self, request: dict[str, Any]) -> dict[str, str]:
        """Create-if-absent: the same id with the same title is the session as it is (a retried
        create), with another title a ``conflict``."""
        title = check_title(request.get("title"))
        given = request.get("id")
        session_id = check_id(given) if given is not None else str(uuid.uuid4())
        revision: int | None = None  # first as a key that never existed: one write, no read before it
        for attempt in range(CAS_TRIES):
            if attempt:
                session, revision = await self._entry(session_id)
                if session is not None:
                    if session["title"] != title:
                        raise ProtocolError(CONFLICT, f"a session with id {session_id!r} already exists with another title")
                    return session
            now = self._now()
            new = {"id": session_id, "title": title, "created_at": now, "updated_at": now}
            if await self._put(new, "created", revision, read=bool(attempt)):
                return new
        raise ProtocolError(CONFLICT, f"session {session_id!r} kept changing; retry")

    async def op_ensure(self, request: dict[str, Any]) -> dict[str, str]:
        session_id, title = check_id(request.get("id")), check_title(request.get("title"))
        for _ in range(CAS_TRIES):
            session, revision = await self._entry(session_id)
            now = self._now()
            if session is None:
                new, change = {"id": session_id, "title": title, "created_at": now, "updated_at": now}, "created"
            else:
                new, change = {**session, "updated_at": now}, "updated"
            if await self._put(new, change, revision):
                return new
        raise ProtocolError(CONFLICT, f"session {session_id!r} kept changing; retry")

    async def op_rename(self, request: dict[str, Any]) -> dict[str, str]:
        title = check_title(request.get("title"))
        return await self._change(check_id(request.get("id")), lambda s: {**s, "title": title, "updated_at": self._now()})

    async def op_touch(self, request: dict[str, Any]) -> dict[str, str]:
        return await self._change(check_id(request.get("id")), lambda s: {**s, "updated_at": self._now()})

    async def op_delete(self, request: dict[str, Any]) -> dict[str, str]:
        """Deleted = a value marked gone (the event needs the session; a KV delete carries none)."""
        session_id = check_id(request.get("id"))
        for _ in range(CAS_TRIES):
            session, revision = await self._entry(session_id)
            if session is None:
                raise ProtocolError(NOT_FOUND, f"no session with id {session_id!r}")
            if await self._put(session, "deleted", revision, gone=True):
                return session
        raise ProtocolError(CONFLICT, f"session {session_id!r} kept changing; retry")

    async def op_restore(self, request: dict[str, Any]) -> dict[str, str]:
        session = request.get("session")
        if not isinstance(session, dict):
            raise ProtocolError(BAD_REQUEST, "'session' must be a map {id, title, created_at, updated_at}")
        try:
            row = {"id": check_id(session.get("id")), "title": check_title(session.get("title")),
                   "created_at": format_ts(parse_ts(str(session["created_at"]))),
                   "updated_at": format_ts(parse_ts(str(session["updated_at"])))}
        except (KeyError, ValueError) as e:
            raise ProtocolError(BAD_REQUEST, f"not an exported session: {e}") from None
        for _ in range(CAS_TRIES):
            existing, revision = await self._entry(row["id"])
            if existing == row:
                return row
            if existing is not None and request.get("overwrite") is not True:
                raise ProtocolError(CONFLICT, f"a different session with id {row['id']!r} exists (overwrite to replace it)")
            if await self._put(row, None, revision):
                return row
        raise ProtocolError(CONFLICT, f"session {row['id']!r} kept changing; retry")

    async def op_list(self, request: dict[str, Any]) -> dict[str, Any]:
        limit = check_limit(request.get("limit"))
        offset = check_offset(request.get("offset"))
        raw = request.get("cursor")
        if raw is not None and offset:
            raise ProtocolError(BAD_REQUEST, "give 'cursor' or 'offset', not both")
        order = self.order
        end = len(order) if raw is None else bisect.bisect_left(order, decode_cursor(raw))
        end -= offset
        start = max(0, end - limit)
        page = [self.index[i] for _, i in reversed(order[start:max(0, end)])]
        more = start > 0
        last = page[-1] if more and page else None
        return {"sessions": page, "next_cursor": encode_cursor(last["updated_at"], last["id"]) if last else None}

    async def op_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "schema_version": SCHEMA_VERSION, "store": "nats-kv"}

    async def op_stats(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "uptime": time.time() - self.started, "sessions": len(self.index),
            "requests": dict(self.counts), "errors": dict(self.errors), "store": "nats-kv",
            "bucket": bucket_name(self.stream), "revision": self.revision, "cas_retries": self.cas_retries,
            "events_published": self.events_published, "events_duplicate": self.events_duplicate,
            "schema_version": SCHEMA_VERSION,
        }


_TICK = timedelta(microseconds=1)
_REMOVED = re.compile(rb"KV-Operation:\s*(DEL|PURGE)")
"""A header line of a key deleted or purged by other tools (this service marks a value gone)."""
_WRITES = frozenset({"create", "ensure", "rename", "touch", "delete", "restore"})
_OPS: dict[str, Callable[[KvSessionService, dict[str, Any]], Any]] = {
    "get": KvSessionService.op_get, "list": KvSessionService.op_list, "create": KvSessionService.op_create,
    "ensure": KvSessionService.op_ensure, "rename": KvSessionService.op_rename, "touch": KvSessionService.op_touch,
    "delete": KvSessionService.op_delete, "restore": KvSessionService.op_restore, "ping": KvSessionService.op_ping,
    "stats": KvSessionService.op_stats,
}

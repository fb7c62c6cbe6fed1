"""The edge: one host's stand-in for the stamping broker on a NATS JetStream backbone.

Towards clients it is the broker (PROTOCOL.md): events come in on ``publish`` (XSUB), are delivered
on ``subscribe`` (XPUB) with the sync handshake, ``control`` answers ``ping``/``stats``/``seqs``, and
``log`` answers the event log's ``replay``/``tail``/``ping``/``stats`` from the stream. Behind it
is one JetStream stream, which every edge of the bus shares:

- an incoming event goes to the stream (a window of publishes in flight; an identified one with
  ``Nats-Msg-Id``, so a resend is stored once; retried with backoff while no ack comes);
- the XPUB is fed by an ordered consumer of the stream: version = stream sequence, and the
  per-topic sequence is counted from the stream in stream order, from a checkpoint that the edges
  keep in a key-value bucket, so every edge hands out the same (version, topic_seq) for an event;
- an identified publisher is confirmed once JetStream acknowledged its event (stored on a
  majority of the replicas), with the stream sequence as the version asked for.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import zmq
import zmq.asyncio

from broker.backbone import stream as layout
from broker.sockets import bind
from schemas.endpoints import Endpoints
from schemas.envelope import (
    BATCH_PREFIX,
    CONFIRM,
    CONFIRM_MAX_BYTES,
    DEFAULT_MAX_EVENT_SIZE,
    STAMP,
    SYNC_PREFIX,
    WANT_VERSION,
    MalformedEvent,
    confirm_entry,
    decode_header,
    split_batch,
)
from schemas.topics import compile_matcher, is_valid_type

log = logging.getLogger("pryxbus.edge")

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_BODY_MARKS = (0x95, layout.IDENTIFIED_MARK)
_ZERO_STAMP = STAMP.pack(0, 0)

ACK_TIMEOUT = 5.0
"""Seconds a publish waits for JetStream's ack before it is sent again (same Msg-Id)."""
RETRY_FIRST, RETRY_MAX = 0.05, 2.0
"""Backoff between retries of a publish: doubled each time, up to RETRY_MAX."""
DRAIN = 256
"""Events read from publishers per turn before the loop lets its other tasks run."""
SEQS_PAGE = 10_000
STATS_TOPICS = 1000
MAX_PAGE = 20_000
TAIL_SCAN = 10_000
"""``tail`` looks at most this many newest events for matches."""
READER_PATIENCE = 30.0
"""Seconds a replay keeps trying to open its consumer while JetStream has no leader to create it."""
SEQ_MEMORY = 4_000_000
"""Versions whose topic_seq the edge remembers for ``replay`` (8 bytes each); older ones are
counted again from a checkpoint."""


@dataclass(frozen=True)
class EdgeConfig:
    servers: list[str]
    stream: str = layout.DEFAULT_STREAM
    replicas: int = 3
    creds: str | None = None
    endpoints: Endpoints = field(default_factory=lambda: Endpoints.tcp("127.0.0.1", 0))
    window: int = 4000
    """Publishes in flight to JetStream at most (then publishers wait)."""
    checkpoint_every: int = 10_000
    """Events between two checkpoints of the per-topic sequences."""
    checkpoint_seconds: float = 5.0
    """A checkpoint at least this often while events flow."""
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    retain_events: int = 0
    retain_seconds: float = 0.0
    sub_hwm: int = 10_000
    in_hwm: int = 10_000


class StreamRefused(Exception):
    """JetStream answered a publish with an error (``code``, ``err_code`` as NATS documents them)."""

    def __init__(self, code: int | None, err_code: int | None, description: str) -> None:
        super().__init__(f"code={code} err_code={err_code} {description}")
        self.code, self.err_code = code, err_code


RETRIED_ERRORS = {10158}
"""JetStream errors worth sending again: 10158, the same Msg-Id still in process (its first copy
is being stored; the retry is answered as a duplicate with its sequence)."""


@dataclass(slots=True)
class _Publish:
    """One event sent to the stream, until JetStream acknowledged it."""

    token: str
    future: asyncio.Future[tuple[int, bool]]
    deadline: float
    data: bytes
    headers: dict[str, str] | None
    ident: tuple[int, int] | None


class Edge:
    """One edge process's sockets, NATS connection and tasks; ``await run(on_ready)`` until ``stop()``."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.subject = layout.subject(config.stream)
        self.version = 0
        """The last stream sequence counted (delivered, or counted while catching up)."""
        self.topic_seq: dict[bytes, int] = {}
        self.base = 0
        """The version the counting started after (a checkpoint's, or 0)."""
        self.seq_of: array.array[int] = array.array("Q")
        """topic_seq of versions ``seq_base + 1 ...`` (for ``replay``)."""
        self.seq_base = 0
        self.live_from = 0
        """Versions above this go to subscribers; the ones up to it were counted while catching up."""
        self.counters = dict.fromkeys(
            ("events_in", "events_out", "malformed", "rejected", "retries", "refused", "duplicates",
             "confirmations", "syncs", "checkpoints", "requests", "bad_requests"), 0,
        )
        self.checkpointed = 0
        self._checkpoint_at = 0.0
        self._checkpointing = False
        self._confirm: dict[int, tuple[int, list[tuple[int, int]]]] = {}
        self._stopping = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.started = time.time()
        self.nc: Any = None
        self.js: Any = None
        self.kv: Any = None
        self.ctx: zmq.asyncio.Context | None = None
        self.endpoints = config.endpoints

    def stop(self) -> None:
        """Ask ``run()`` to return (safe from a signal handler on the loop's thread)."""
        self._stopping.set()

    # -- set-up ------------------------------------------------------------------------------

    async def run(self, on_ready: Callable[[Edge], None]) -> None:
        """Connect, catch up with the stream, bind, call ``on_ready``, serve until ``stop()``."""
        try:
            await self._connect()
            await self._catch_up()
            if self._stopping.is_set():
                return
            self._bind()
            self._tasks += [asyncio.create_task(t) for t in (
                self._take(), self._confirmations(), self._syncs(), self._serve(self.control, self._control_op),
                self._serve(self.log_sock, self._log_op), self._checkpoints(),
            )]
            on_ready(self)
            await self._stopping.wait()
        finally:
            await self.close()

    async def _connect(self) -> None:
        import nats
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig

        cfg = self.config
        options: dict[str, Any] = dict(
            servers=cfg.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=5,
            error_cb=self._nats_error, disconnected_cb=self._nats_event("disconnected"),
            reconnected_cb=self._nats_event("reconnected"), pending_size=8 * 1024 * 1024,
        )
        if cfg.creds:
            options["user_credentials"] = cfg.creds
        self.nc = await nats.connect(**options)
        self.js = self.nc.jetstream(timeout=ACK_TIMEOUT)
        # Acks come to one inbox subscription (nats-py's publish_async never settles a publish that
        # JetStream answers with an error: its reply handler raises instead).
        self._ack_prefix = self.nc.new_inbox() + "."
        self._acks: dict[str, asyncio.Future[tuple[int, bool]]] = {}
        self._tokens = 0
        await self.nc.subscribe(self._ack_prefix + "*", cb=self._on_ack, pending_msgs_limit=1 << 20,
                                pending_bytes_limit=1 << 28)
        stream = StreamConfig(
            name=cfg.stream, subjects=[self.subject], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, num_replicas=cfg.replicas, duplicate_window=120.0,
            max_msgs=cfg.retain_events or -1, max_age=cfg.retain_seconds or None,
        )
        await asyncio.gather(self._ensure_stream(stream), self._ensure_bucket())

    async def _ensure_stream(self, stream: Any) -> None:
        from nats.js.errors import BadRequestError

        try:
            await self.js.add_stream(stream)
        except BadRequestError:  # it exists with another configuration: use it as it is
            await self.js.stream_info(self.config.stream)

    async def _ensure_bucket(self) -> None:
        from nats.js.api import KeyValueConfig, StorageType

        bucket = layout.checkpoint_bucket(self.config.stream)
        try:
            self.kv = await self.js.key_value(bucket)
        except Exception:  # nats-py raises BucketNotFoundError, or NotFoundError on some servers
            self.kv = await self.js.create_key_value(
                KeyValueConfig(bucket=bucket, history=64, replicas=self.config.replicas, storage=StorageType.FILE)
            )

    async def _nats_error(self, error: Exception) -> None:
        log.warning("nats: %s", error or type(error).__name__)

    def _nats_event(self, what: str) -> Callable[[], Any]:
        async def report() -> None:
            log.warning("nats: %s", what)

        return report

    async def _catch_up(self) -> None:
        """Start counting from the newest checkpoint and count, silently, up to the stream's last
        sequence now: subscribers get only what comes after."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        info = await self.js.stream_info(self.config.stream)
        last, first = info.state.last_seq, info.state.first_seq
        base, seqs = await self._checkpoint()
        if base > last:  # a checkpoint of a stream since deleted and created again under the name
            log.warning("the checkpoint (version %d) is past the stream's end (%d): counting from its start", base, last)
            base, seqs = 0, {}
        if base + 1 < first and first > 1:
            log.warning("no checkpoint covers the stream's start (%d): topic sequences count from there", first)
            base, seqs = first - 1, {}
        self.version = self.base = self.seq_base = self.checkpointed = base
        self.topic_seq = seqs
        self.live_from = last
        if base >= last:
            self._caught_up.set()
        self._consumer = await self.js.subscribe(
            self.subject, cb=self._deliver, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=base + 1),
            pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30,
        )
        if not self._caught_up.is_set():
            log.info("catching up from version %d to %d", base, last)
            stop = asyncio.create_task(self._stopping.wait())
            await asyncio.wait([stop, asyncio.create_task(self._caught_up.wait())], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()

    async def _checkpoint(self, at_most: int | None = None) -> tuple[int, dict[bytes, int]]:
        """The newest checkpoint (version, seqs), or with ``at_most`` the newest at or below it."""
        from nats.js.errors import KeyNotFoundError, NoKeysError

        try:
            if at_most is None:
                entries = [await self.kv.get(layout.CHECKPOINT_KEY)]
            else:
                entries = list(reversed(await self.kv.history(layout.CHECKPOINT_KEY)))
        except (KeyNotFoundError, NoKeysError):
            return 0, {}
        for entry in entries:
            if not entry.value:
                continue
            version, seqs = msgpack.unpackb(entry.value, raw=True, strict_map_key=False)
            if at_most is None or version <= at_most:
                return int(version), dict(seqs)
        return 0, {}

    def _bind(self) -> None:
        cfg, ep = self.config, self.config.endpoints
        ctx = self.ctx = zmq.asyncio.Context()
        self.xsub = ctx.socket(zmq.XSUB)
        self.xsub.linger = 0
        self.xsub.rcvhwm = cfg.in_hwm
        self.xsub.maxmsgsize = cfg.max_event_size + 319
        bound = {"publish": bind(self.xsub, ep.publish)}
        self.xpub = ctx.socket(zmq.XPUB)
        self.xpub.linger = 0
        self.xpub.sndhwm = cfg.sub_hwm
        self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.xpub.maxmsgsize = 256
        bound["subscribe"] = bind(self.xpub, ep.subscribe)
        self.control = ctx.socket(zmq.ROUTER)
        self.control.linger = 0
        bound["control"] = bind(self.control, ep.control)
        self.log_sock = ctx.socket(zmq.ROUTER)
        self.log_sock.linger = 0
        if ep.log:
            bound["log"] = bind(self.log_sock, ep.log)
        self.endpoints = ep.with_(**bound)
        # Blocking-free sends on the same sockets without a coroutine per message.
        self._xpub_send = zmq.Socket.shadow(self.xpub.underlying).send
        self._xsub_sync = zmq.Socket.shadow(self.xsub.underlying)
        self.xsub.send(b"\x01")  # subscribe to every publisher (their XPUB waits for it)
        watched = zmq.EVENT_ACCEPTED
        self.in_monitor = self.xsub.get_monitor_socket(watched)
        self._tasks.append(asyncio.create_task(self._resubscribe()))

    async def _resubscribe(self) -> None:
        """A bound XSUB does not replay its subscription to publishers that connect later."""
        while True:
            await self.in_monitor.recv_multipart()
            self.xsub.send(b"\x01")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self._write_checkpoint()
            except Exception as e:  # the cluster may be gone: the next checkpoint will do
                log.warning("no checkpoint at stop: %s", e)
            try:
                await asyncio.wait_for(self.nc.close(), 5)
            except Exception as e:
                log.warning("closing the NATS connection: %s", e)
        if self.ctx is not None:
            try:
                self.xsub.disable_monitor()
            except zmq.ZMQError:
                pass
            self.ctx.destroy(linger=0)
            for path in self.endpoints.with_(sessions="", log_feed="").ipc_paths():
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass

    # -- publishers -> stream ----------------------------------------------------------------

    async def _take(self) -> None:
        """Read publishers' events and send them to the stream, a window of them in flight."""
        self._in_flight: asyncio.Queue[_Publish] = asyncio.Queue(self.config.window)
        recv = self._xsub_sync.recv_multipart
        while True:
            frames = await self.xsub.recv_multipart()
            await self._send(frames)
            for _ in range(DRAIN):
                try:
                    frames = recv(_NOBLOCK)
                except zmq.Again:
                    break
                await self._send(frames)
            # A receive that finds a message waiting never yields to the loop: without this, nats-py's
            # flusher would not write a publish until the window filled.
            await asyncio.sleep(0)

    async def _send(self, frames: list[bytes]) -> None:
        if len(frames) == 3 and frames[0][:1] == BATCH_PREFIX:  # a batch (PROTOCOL.md §4.2): event by event
            try:
                bodies = split_batch(frames[1], frames[2])
            except MalformedEvent:
                self.counters["rejected"] += 1
                return
            topic = frames[0][1:]
            for body in bodies:
                await self._send([topic, body])
            return
        if len(frames) != 2:
            self.counters["malformed"] += 1
            return
        topic, body = frames
        if not body or body[0] not in _BODY_MARKS or not is_valid_type(topic) or len(body) > self.config.max_event_size:
            self.counters["rejected"] += 1
            return
        who = layout.identity(body)
        headers = {layout.MSG_ID: layout.msg_id(*who)} if who is not None else None
        data = layout.pack(topic, body)
        self._tokens += 1
        token = str(self._tokens)
        future: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        self._acks[token] = future
        await self._in_flight.put(_Publish(token, future, time.monotonic() + ACK_TIMEOUT, data, headers, who))
        await self.nc.publish(self.subject, data, reply=self._ack_prefix + token, headers=headers)
        self.counters["events_in"] += 1

    async def _on_ack(self, msg: Any) -> None:
        """JetStream's answer to one publish: settle its future."""
        future = self._acks.pop(msg.subject[len(self._ack_prefix):], None)
        if future is None or future.done():
            return
        if not msg.data:  # a status message: no responders (no stream leader just now)
            future.set_exception(StreamRefused(503, None, "no responders"))
            return
        try:
            reply = json.loads(msg.data)
        except ValueError:
            future.set_exception(StreamRefused(None, None, "an ack that is not JSON"))
            return
        error = reply.get("error")
        if error:
            future.set_exception(StreamRefused(error.get("code"), error.get("err_code"), error.get("description", "")))
        else:
            future.set_result((int(reply["seq"]), bool(reply.get("duplicate"))))

    async def _confirmations(self) -> None:
        """Take JetStream's acks in publish order; confirm identified publishers once acked."""
        while not hasattr(self, "_in_flight"):
            await asyncio.sleep(0)
        queue = self._in_flight
        while True:
            sent = await queue.get()
            try:
                ack = await asyncio.wait_for(sent.future, max(0.0, sent.deadline - time.monotonic()))
            except Exception as e:
                self._acks.pop(sent.token, None)
                ack = await self._retry(sent, e)
            if ack is not None and sent.ident is not None:
                seq, duplicate = ack
                if duplicate:
                    self.counters["duplicates"] += 1
                publisher, number = sent.ident
                through, pairs = self._confirm.get(publisher, (0, []))
                if number & WANT_VERSION:
                    number &= ~WANT_VERSION
                    pairs.append((number, seq))
                self._confirm[publisher] = (max(through, number), pairs)
            if queue.empty() and self._confirm:
                self._send_confirmations()

    async def _retry(self, sent: _Publish, error: Exception) -> tuple[int, bool] | None:
        """Send again until JetStream acknowledges (an identified event keeps its Msg-Id, so it is
        stored once); None if the stream refused it for good."""
        from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

        delay = RETRY_FIRST
        while True:
            code = getattr(error, "code", None)
            if isinstance(error, (APIError, StreamRefused)) and not isinstance(
                error, (NoStreamResponseError, ServiceUnavailableError)
            ) and code != 503 and getattr(error, "err_code", None) not in RETRIED_ERRORS:
                self.counters["refused"] += 1
                log.warning("the stream refused an event: %s", error)
                return None
            self.counters["retries"] += 1
            quiet = getattr(error, "err_code", None) in RETRIED_ERRORS
            if not quiet and (self.counters["retries"] == 1 or self.counters["retries"] % 1000 == 0):
                log.warning("no ack from JetStream (%s): sending again (%d retries so far)",
                            type(error).__name__, self.counters["retries"])
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            try:
                ack = await self.js.publish(self.subject, sent.data, timeout=ACK_TIMEOUT, headers=sent.headers)
                return ack.seq, bool(ack.duplicate)
            except Exception as e:
                error = e

    def _send_confirmations(self) -> None:
        entries, size = [], 1
        for publisher, (through, pairs) in self._confirm.items():
            entry = confirm_entry(publisher, through, pairs)
            if size + len(entry) > CONFIRM_MAX_BYTES and entries:
                self._xsub_sync.send(CONFIRM + b"".join(entries))
                entries, size = [], 1
            entries.append(entry)
            size += len(entry)
        self._xsub_sync.send(CONFIRM + b"".join(entries))
        self.counters["confirmations"] += 1
        self._confirm.clear()

    # -- stream -> subscribers ---------------------------------------------------------------

    async def _deliver(self, msg: Any) -> None:
        """The ordered consumer's callback: count the event's topic sequence and send it on."""
        version = msg.metadata.sequence.stream
        data = msg.data
        n = data[0]
        topic = data[1 : 1 + n]
        seqs = self.topic_seq
        seq = seqs.get(topic, 0) + 1
        seqs[topic] = seq
        if version != self.version + 1:  # messages removed from the stream (limits): no seq for them
            self.seq_of.extend([0] * max(0, version - self.version - 1))
        self.version = version
        self.seq_of.append(seq)
        if len(self.seq_of) > 2 * SEQ_MEMORY:
            del self.seq_of[:SEQ_MEMORY]
            self.seq_base += SEQ_MEMORY
        if version >= self.live_from and not self._caught_up.is_set():
            self._caught_up.set()
        if version > self.live_from:
            send = self._xpub_send
            send(topic, _SNDMORE)
            send(STAMP.pack(version, seq), _SNDMORE)
            send(data[1 + n :], 0, False)
            self.counters["events_out"] += 1
        if version - self.checkpointed >= self.config.checkpoint_every and not self._checkpointing:
            self._checkpointing = True
            asyncio.get_running_loop().create_task(self._write_checkpoint())

    async def _syncs(self) -> None:
        """Answer sync subscriptions (PROTOCOL.md §6) after everything delivered before them."""
        while True:
            msg = await self.xpub.recv()
            if msg[:1] == b"\x01" and msg[1:].startswith(SYNC_PREFIX):
                self.counters["syncs"] += 1
                send = self._xpub_send
                send(msg[1:], _SNDMORE)
                send(_ZERO_STAMP, _SNDMORE)
                send(b"", 0)

    # -- checkpoints -------------------------------------------------------------------------

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_seconds)
            if self.version > self.checkpointed and not self._checkpointing:
                self._checkpointing = True
                await self._write_checkpoint()

    async def _write_checkpoint(self) -> None:
        """Store (version, every topic's sequence) unless a checkpoint as new is there already.
        Every edge counts the same, so whichever writes, the values are the same."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        try:
            version, value = self.version, msgpack.packb([self.version, self.topic_seq], use_bin_type=True)
            try:
                entry = await self.kv.get(layout.CHECKPOINT_KEY)
                stored, _ = msgpack.unpackb(entry.value, raw=True, strict_map_key=False)
                if stored >= version:
                    self.checkpointed = version
                    return
                await self.kv.update(layout.CHECKPOINT_KEY, value, last=entry.revision)
            except KeyNotFoundError:
                await self.kv.create(layout.CHECKPOINT_KEY, value)
            self.checkpointed = version
            self.counters["checkpoints"] += 1
        except KeyWrongLastSequenceError:
            pass  # another edge wrote one meanwhile: the next turn looks again
        except Exception as e:
            log.warning("checkpoint not written: %s", e)
        finally:
            self._checkpointing = False

    # -- requests ----------------------------------------------------------------------------

    async def _serve(self, sock: zmq.asyncio.Socket, handle: Callable[[dict[str, Any]], Any]) -> None:
        """Answer a ROUTER's requests, each in its own task (a replay reads the stream)."""
        while True:
            frames = await sock.recv_multipart()
            asyncio.get_running_loop().create_task(self._answer(sock, handle, frames))

    async def _answer(self, sock: zmq.asyncio.Socket, handle: Callable[[dict[str, Any]], Any], frames: list[bytes]) -> None:
        *envelope, body = frames
        self.counters["requests"] += 1
        try:
            request = msgpack.unpackb(body, raw=False)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("expected a map with a str 'op'")
            reply = {"ok": True, "result": await handle(request)}
        except _UnknownOp as e:
            self.counters["bad_requests"] += 1
            reply = {"ok": False, "code": "unknown_op", "message": str(e)}
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
            self.counters["bad_requests"] += 1
            reply = {"ok": False, "code": "bad_request", "message": str(e) or type(e).__name__}
        except Exception as e:
            log.warning("request failed: %r", e)
            reply = {"ok": False, "code": "internal", "message": f"{type(e).__name__}: {e}"}
        try:
            await sock.send_multipart([*envelope, msgpack.packb(reply, use_bin_type=True)])
        except zmq.ZMQError:
            pass

    def _ping(self) -> dict[str, Any]:
        return {
            "status": "ok", "pid": os.getpid(), "version": self.version, "first_version": 1,
            "max_event_size": self.config.max_event_size, "backbone": self.config.stream,
        }

    async def _control_op(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op in ("ping", "health"):
            return self._ping()
        if op == "stats":
            busiest = sorted(self.topic_seq.items(), key=lambda kv: kv[1], reverse=True)[:STATS_TOPICS]
            return {
                **self._ping(), "uptime": time.time() - self.started, **self.counters,
                "topics": {t.decode(): n for t, n in busiest}, "topic_count": len(self.topic_seq),
                "taking_events": True, "backbone": self._backbone_stats(),
                "config": {"sub_hwm": self.config.sub_hwm, "in_hwm": self.config.in_hwm,
                           "max_event_size": self.config.max_event_size},
                "endpoints": self.endpoints.names(),
            }
        if op == "seqs":
            matches = compile_matcher(request.get("patterns") or [])
            after = int(request.get("after", 0))
            found = [(t, n) for t, n in self.topic_seq.items() if matches(t)]
            page = found[after : after + SEQS_PAGE]
            return {
                "version": self.version, "first_version": 1, "seqs": {t.decode(): n for t, n in page},
                "next": after + SEQS_PAGE if len(found) > after + SEQS_PAGE else None,
            }
        raise _UnknownOp(f"unknown op {op!r}; known: ping, health, stats, seqs")

    def _backbone_stats(self) -> dict[str, Any]:
        return {
            "stream": self.config.stream, "servers": self.config.servers, "replicas": self.config.replicas,
            "in_flight": self._in_flight.qsize() if hasattr(self, "_in_flight") else 0,
            "checkpoint": self.checkpointed, "counted_from": self.base,
            "connected_url": str(self.nc.connected_url.geturl()) if self.nc and self.nc.connected_url else None,
        }

    async def _log_op(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "replay":
            return await self._replay(request)
        if op == "tail":
            return await self._tail(request)
        if op == "ping":
            return {"status": "ok", "pid": os.getpid(), "last": self.version}
        if op == "stats":
            info = await self.js.stream_info(self.config.stream)
            return {
                "events": info.state.messages, "first": info.state.first_seq, "last": info.state.last_seq,
                "backbone": self._backbone_stats(), "requests": self.counters["requests"],
                "bad_requests": self.counters["bad_requests"],
            }
        raise _UnknownOp(f"unknown op {op!r}; known: replay, tail, ping, stats (served from the stream)")

    async def _replay(self, request: dict[str, Any]) -> dict[str, Any]:
        since = int(request.get("since", 0) or 0)
        until = request.get("until")
        until = None if until is None else int(until)
        limit = max(1, min(int(request.get("limit", 5000) or 5000), MAX_PAGE))
        matches = _filter(request)
        last = self.version  # what this edge has counted: everything up to it is in the stream
        end = last if until is None else min(until, last)
        rows: list[list[Any]] = []
        cursor = since
        if end > since:
            async for version, seq, topic, body in self._read(since + 1, end):
                cursor = version
                if matches(topic, body):
                    rows.append([version, seq, topic.decode(), body])
                    if len(rows) == limit:
                        break
        exhausted = cursor >= end
        done = exhausted and (until is None or last >= until)
        if exhausted and until is not None and last >= until:
            cursor = until
        return {"events": rows, "next": max(cursor, since), "done": done, "exhausted": exhausted,
                "last": last, "imported": []}

    async def _tail(self, request: dict[str, Any]) -> dict[str, Any]:
        limit = max(1, min(int(request.get("limit", 10) or 10), MAX_PAGE))
        matches = _filter(request)
        last = self.version
        picked: deque[list[Any]] = deque(maxlen=limit)
        start = max(self.base + 1, last - max(limit, TAIL_SCAN) + 1)
        if last >= start:
            async for version, seq, topic, body in self._read(start, last):
                if matches(topic, body):
                    picked.append([version, seq, topic.decode(), body])
        return {"events": list(picked), "last": last}

    async def _read(self, start: int, end: int) -> Any:
        """(version, topic_seq, topic, body) of the stream's events ``start..end``, in order.

        The consumer's callback only appends to a list, taken here in batches: a ``next_msg`` per
        event costs a future and a wake-up each."""
        if start > self.seq_base:
            seqs: dict[bytes, int] | None = None
            first = start
        else:  # older than the edge remembers: count again from a checkpoint at or before it
            at, seqs = await self._checkpoint(at_most=start - 1)
            first = at + 1
        arrived: list[Any] = []
        ready = asyncio.Event()

        async def collect(msg: Any) -> None:
            arrived.append(msg)
            ready.set()

        sub = await self._reader(first, collect)
        seq_of, seq_base = self.seq_of, self.seq_base
        try:
            while True:
                if not arrived:
                    ready.clear()
                    await asyncio.wait_for(ready.wait(), ACK_TIMEOUT)
                batch = arrived[:]
                del arrived[:]
                for msg in batch:
                    version = msg.metadata.sequence.stream
                    if version > end:
                        return
                    data = msg.data
                    n = data[0]
                    topic = data[1 : 1 + n]
                    if seqs is not None:
                        seq = seqs.get(topic, 0) + 1
                        seqs[topic] = seq
                    else:
                        seq = seq_of[version - seq_base - 1]
                    if version >= start:
                        yield version, seq, topic, data[1 + n :]
                    if version >= end:
                        return
        finally:
            await sub.unsubscribe()

    async def _reader(self, first: int, cb: Callable[[Any], Any]) -> Any:
        """An ordered consumer from ``first``; creating one is retried for a while, since JetStream
        answers 503 while the stream or the cluster's meta group elects a leader."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import ConsumerConfig, DeliverPolicy
        from nats.js.errors import ServiceUnavailableError

        delay, deadline = RETRY_FIRST, time.monotonic() + READER_PATIENCE
        while True:
            try:
                return await self.js.subscribe(
                    self.subject, cb=cb, ordered_consumer=True,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first),
                    pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30,
                )
            except (ServiceUnavailableError, NoRespondersError, NatsTimeout, asyncio.TimeoutError):
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)


class _UnknownOp(Exception):
    pass


def _filter(request: dict[str, Any]) -> Callable[[bytes, bytes], bool]:
    """The replay/tail filters (patterns, session_id, ts_from, ts_until) as one predicate."""
    patterns = request.get("patterns") or []
    if not isinstance(patterns, list):
        raise ValueError("patterns: expected a list")
    topic_ok = compile_matcher(patterns)
    session_id, ts_from, ts_until = request.get("session_id"), request.get("ts_from"), request.get("ts_until")
    if session_id is None and ts_from is None and ts_until is None:
        return lambda topic, body: topic_ok(topic)

    def matches(topic: bytes, body: bytes) -> bool:
        if not topic_ok(topic):
            return False
        try:
            ts, _source, sid = decode_header(body)
        except Exception:
            return False
        return ((session_id is None or sid == session_id) and (ts_from is None or ts >= ts_from)
                and (ts_until is None or ts < ts_until))

    return matches

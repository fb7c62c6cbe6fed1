"""The edge: one host's stand-in for the stamping broker on a NATS JetStream backbone.

Towards clients it is the broker (PROTOCOL.md): events come in on ``publish`` (XSUB), are delivered
on ``subscribe`` (XPUB) with the sync handshake, ``control`` answers ``ping``/``stats``/``seqs``, and
``log`` answers the event log's ``replay``/``tail``/``summary``/``publishers``/``import``/``ping``/
``stats`` from the stream. Behind it is one JetStream stream, which every edge of the bus shares:

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
import logging
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable

import msgpack
import zmq
import zmq.asyncio
import zmq.backend

from broker.backbone import logops, replay
from broker.backbone import stream as layout
from broker.backbone.checkpoints import Checkpoints
from broker.backbone.delivery import Delivery
from broker.backbone.peers import IN_EVENTS, OUT_EVENTS, EdgePeers
from broker.backbone.publishing import ACK_TIMEOUT, StreamPublisher
from broker.backbone.wire import Wire
from broker.bus.config import CURVE_SLACK, IN_BYTES, SUB_BYTES, message_bytes, queue_limit
from broker.bus.split import Splitter
from broker.security import Authenticator, ServerKeys, secure_server
from broker.sockets import bind
from schemas.endpoints import Endpoints
from schemas.envelope import DEFAULT_MAX_EVENT_SIZE, MAX_RUN, MAX_RUN_BYTES, RUN_LENGTH, STAMP
from schemas.topics import MAX_TYPE_LENGTH
from schemas.topics import compile_matcher

log = logging.getLogger("pryxbus.edge")

DUPLICATE_WINDOW = 120.0
"""Seconds JetStream remembers a ``Nats-Msg-Id`` (at most the stream's max age, which it requires)."""
STREAM_EXISTS = 10058
"""JetStream's error code for a stream name already in use with another configuration."""
STOP_PATIENCE = 2.0
"""Seconds a stop waits for the last checkpoint, then for the NATS connection to close."""
STREAM_MESSAGE_SLACK = 384
"""Bytes of a stream message besides the event's body: its topic (a length byte and up to 255)
and the ``Nats-Msg-Id`` header, which count against the servers' ``max_payload`` too."""
SEQS_PAGE = 10_000
STATS_TOPICS = 1000


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
    retain_events: int | None = None
    """The stream's ``max_msgs``; None: as the stream has it (none when the edge creates it)."""
    retain_seconds: float | None = None
    """The stream's ``max_age``; None as above."""
    retain_bytes: int | None = None
    """The stream's ``max_bytes``; None as above."""
    version_base: int | None = None
    """``--version-base``: the stream's versions start after it (its ``first_seq`` is one more);
    None: the stream's own base, or ``home_version`` for a stream this edge creates."""
    home_version: int = 0
    """The last version a single-host bus in this edge's home stamped or reserved (0: none): the
    base when this edge creates the stream, and no stream with a lower base is served."""
    sub_hwm: int = 10_000
    in_hwm: int = 10_000
    sub_bytes: int = SUB_BYTES
    """Bytes queued per subscriber at the edge, as the broker's ``--sub-bytes``: longer runs and
    events go in messages of at most :meth:`message_bytes` (runs that fit, fragments), and
    ``sub_hwm`` is capped at the budget over the largest message; 0: no cap, nothing split."""
    in_bytes: int = IN_BYTES
    """Bytes queued per publisher into the edge, as the broker's ``--in-bytes`` (0: no cap)."""
    curve: ServerKeys | None = None
    """CURVE keys (``--curve``): every bound socket is a CURVE server behind the home's allow-list."""
    lifecycle_events: bool = False
    """``--lifecycle-events``: publish ``bus:started`` and this edge's connection changes (peers.py)."""

    def message_bytes(self) -> int:
        """The most bytes of stamp and body in one message the edge delivers (0: no bound)."""
        return message_bytes(self.sub_bytes)

    def sub_queue(self) -> int:
        """Each subscriber's high-water mark at the edge: ``sub_hwm``, capped by ``sub_bytes``."""
        bound = self.message_bytes()
        largest = MAX_TYPE_LENGTH + (bound or STAMP.size + RUN_LENGTH.size * MAX_RUN
                                     + max(self.max_event_size, MAX_RUN_BYTES))
        return queue_limit(self.sub_hwm, self.sub_bytes, largest)

    def in_queue(self) -> int:
        """Each publisher's high-water mark into the edge: ``in_hwm``, capped by ``in_bytes``."""
        return queue_limit(self.in_hwm, self.in_bytes, self.max_event_size + MAX_TYPE_LENGTH + 64)


class EdgeRefused(Exception):
    """The edge cannot serve as configured (the message says why and what to do)."""


class Edge(Checkpoints, Delivery):
    """One edge process's sockets, NATS connection and tasks; ``await run(on_ready)`` until ``stop()``."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.subject = layout.subject(config.stream)
        self.version = 0
        """The last stream sequence counted (delivered, or counted while catching up)."""
        self.topic_seq: dict[bytes, int] = {}
        self.base = 0
        """The version the counting started after (a checkpoint's, or 0)."""
        self.base_seqs: dict[bytes, int] = {}
        """Every topic's sequence at ``base``."""
        self.version_base = 0
        """The stream's versions start after this (its ``first_seq`` - 1): a single-host home's
        last version when it moved onto the backbone, else 0."""
        self.seq_of: array.array[int] = array.array("Q")
        """topic_seq of versions ``seq_base + 1 ...`` (for ``replay``)."""
        self.seq_base = 0
        self.live_from = 0
        """Versions above this go to subscribers; the ones up to it were counted while catching up."""
        self.counters = dict.fromkeys(
            ("events_in", "events_out", "malformed", "rejected", "out_of_order", "retries", "refused",
             "duplicates", "confirmations", "syncs", "checkpoints", "requests", "bad_requests"), 0,
        )
        self.checkpointed = 0
        self.checkpoint_every = config.checkpoint_every
        """``config.checkpoint_every``, or less under the stream's ``max_msgs`` (see _ensure_stream)."""
        self.limits: dict[str, Any] = {}
        """The stream's retention limits as it has them (the log's ``stats`` shows them)."""
        self._checkpoint_at = 0.0
        self._syncs_look_due = False
        """A look at the XPUB is scheduled (:meth:`_look_for_syncs`)."""
        self._checkpointing = False
        self.publisher: StreamPublisher | None = None
        self.wire: Wire
        self._run = []
        self._xpub_send: Any = None
        self.splitter: Splitter | None = None  # bound messages for byte budgets (_bind)
        self.peers: EdgePeers | None = None
        self._nats_errors = 0
        self._nats_error_logged = 0.0
        self._stopping = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.readers = replay.Readers()
        """The consumers replay pages left open for the next page."""
        self.started = time.time()
        self.nc: Any = None
        self.js: Any = None
        self.kv: Any = None
        self.ctx: zmq.asyncio.Context | None = None
        self._auth: Authenticator | None = None
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
                self._take(), self._syncs(), self._serve(self.control, self._control_op),
                self._serve(self.log_sock, self._log_op), self._checkpoints(),
            )]
            if self.config.lifecycle_events:
                assert self.peers is not None
                self.peers.emit("bus:started", {"pid": os.getpid(), "first_version": self.version_base + 1})
                self._tasks.append(asyncio.create_task(self.peers.announce()))
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
            skip_subject_validation=True,  # the edge's subjects are its own: the stream's and inboxes
        )
        if cfg.creds:
            options["user_credentials"] = cfg.creds
        self.nc = await nats.connect(**options)
        fits = self.nc.max_payload - STREAM_MESSAGE_SLACK
        if cfg.max_event_size > fits:  # what publishers learn (ping), so the SDK refuses bigger events
            log.warning("events are limited to %d bytes, not %d: the NATS servers take messages of up to %d"
                        " bytes (max_payload), with the topic and headers", fits, cfg.max_event_size,
                        self.nc.max_payload)
            self.config = cfg = replace(cfg, max_event_size=fits)
        wire = Wire.install(self.nc)
        if wire is None:
            raise EdgeRefused("this nats-py lacks the internals the edge reads its messages with (those of nats-py 2.16)")
        self.wire = wire
        wire.after.append(self._send_run)
        self.js = self.nc.jetstream(timeout=ACK_TIMEOUT)
        stream = StreamConfig(
            name=cfg.stream, subjects=[self.subject], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, num_replicas=cfg.replicas,
            duplicate_window=min(DUPLICATE_WINDOW, cfg.retain_seconds or DUPLICATE_WINDOW),
            max_msgs=cfg.retain_events or -1, max_bytes=cfg.retain_bytes or -1, max_age=cfg.retain_seconds or 0,
        )
        base = cfg.home_version if cfg.version_base is None else cfg.version_base
        if base:
            stream.first_seq = base + 1
        await asyncio.gather(self._ensure_stream(stream), self._ensure_bucket())

    async def _ensure_stream(self, stream: Any) -> None:
        """Create the stream, or use the one there; a retention limit given (``--retain-*``) that
        the stream has otherwise is changed on it (JetStream removes what the new limits exclude)."""
        from nats.js.errors import BadRequestError

        try:
            info = await self.js.add_stream(stream)
        except BadRequestError as e:
            if e.err_code != STREAM_EXISTS:
                raise EdgeRefused(f"JetStream refused the stream {stream.name}: {e.description}") from None
            info = await self.js.stream_info(stream.name)
            self._check_version_base(info.config)
            info = await self._update_limits(info, stream)
        self._note_limits(info.config)
        self.version_base = (info.config.first_seq or 1) - 1

    def _check_version_base(self, config: Any) -> None:
        """Refuse a stream whose version base differs from the one given, or is below this home's
        single-host versions (its clients would see those versions again)."""
        cfg, base = self.config, (config.first_seq or 1) - 1
        if cfg.version_base is not None and cfg.version_base != base:
            raise EdgeRefused(
                f"the stream {config.name} numbers versions from {base + 1} (version base {base}), not"
                f" from --version-base {cfg.version_base} + 1: every home of a bus has the stream's"
                " base (leave --version-base out to take it)")
        if cfg.home_version > base:
            raise EdgeRefused(
                f"this home's single-host bus reached version {cfg.home_version} (HOME/broker.version,"
                f" HOME/events.db) but the stream {config.name} numbers versions from {base + 1}: its"
                " clients would see those versions again. Use another home, or move this one onto a new"
                f" stream (--stream NAME; it is created with version base {cfg.home_version})")

    async def _update_limits(self, info: Any, wanted: Any) -> Any:
        """The stream with the limits this edge was given (and its others as they are)."""
        from dataclasses import replace

        from nats.js.errors import BadRequestError

        given = {name: getattr(wanted, name) for name, option in _LIMITS.items()
                 if getattr(self.config, option) is not None}
        current = info.config
        changes = {name: value for name, value in given.items() if not _same_limit(getattr(current, name), value)}
        if not changes:
            return info
        if "max_age" in changes and changes["max_age"] and current.duplicate_window > changes["max_age"]:
            changes["duplicate_window"] = changes["max_age"]
        try:
            updated = await self.js.update_stream(replace(current, **changes))
        except BadRequestError as e:
            raise EdgeRefused(
                f"the stream {wanted.name} has {_limits_text(current, changes)}; changing it to"
                f" {_limits_text(wanted, changes)} was refused: {e.description}") from None
        log.warning("the stream %s had %s: changed to %s", wanted.name, _limits_text(current, changes),
                    _limits_text(wanted, changes))
        return updated

    def _note_limits(self, config: Any) -> None:
        """Remember the stream's limits; checkpoint at least twice per ``max_msgs`` events, so a
        restarting edge finds a checkpoint within what the stream still holds."""
        self.limits = {
            "events": config.max_msgs if config.max_msgs and config.max_msgs > 0 else None,
            "seconds": config.max_age or None,
            "bytes": config.max_bytes if config.max_bytes and config.max_bytes > 0 else None,
        }
        if self.limits["events"]:
            self.checkpoint_every = max(1, min(self.config.checkpoint_every, self.limits["events"] // 2))

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
        """nats-py reports each failed reconnect (every server, every 0.2 s): log the first of an
        outage, then one a minute."""
        self._nats_errors += 1
        now = time.monotonic()
        if self._nats_errors == 1 or now - self._nats_error_logged >= 60:
            more = f" ({self._nats_errors} errors since it was last connected)" if self._nats_errors > 1 else ""
            log.warning("nats: %s%s", error or type(error).__name__, more)
            self._nats_error_logged = now

    def _nats_event(self, what: str) -> Callable[[], Any]:
        async def report() -> None:
            if what == "reconnected":
                self._nats_errors = 0
            log.warning("nats: %s", what)

        return report

    async def _catch_up(self) -> None:
        """Start counting from the newest checkpoint and count, silently, up to the stream's last
        sequence now: subscribers get only what comes after."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        info = await self.js.stream_info(self.config.stream)
        last, first = info.state.last_seq, info.state.first_seq
        base, seqs = await self.checkpoint()
        if base < self.version_base:  # a new stream (or a checkpoint of an older one of that name)
            base, seqs = self.version_base, {}
        if base > last:  # a checkpoint of a stream since deleted and created again under the name
            log.warning("the checkpoint (version %d) is past the stream's end (%d): counting from its start", base, last)
            base, seqs = 0, {}
        if base + 1 < first and first > 1:
            log.warning("no checkpoint covers the stream's start (%d): topic sequences count from there", first)
            base, seqs = first - 1, {}
        self.version = self.base = self.seq_base = self.checkpointed = base
        self.topic_seq = seqs
        self.base_seqs = dict(seqs)
        self.live_from = last
        if base >= last:
            self._caught_up.set()
        self._consumer = await self.js.subscribe(
            self.subject, cb=self._deliver_msg, ordered_consumer=True, idle_heartbeat=layout.HEARTBEAT,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=base + 1),
            pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30,
        )
        self.wire.ordered(self._consumer, self._deliver)
        if not self._caught_up.is_set():
            log.info("catching up from version %d to %d", base, last)
            stop = asyncio.create_task(self._stopping.wait())
            await asyncio.wait([stop, asyncio.create_task(self._caught_up.wait())], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()

    def _bind(self) -> None:
        cfg, ep = self.config, self.config.endpoints
        ctx = self.ctx = zmq.asyncio.Context()
        if cfg.curve is not None:  # before anything binds: fail closed (ZAP runs on the same context)
            self._auth = Authenticator(zmq.Context.shadow(ctx.underlying), cfg.curve)
        self.xsub = self._server_socket(zmq.XSUB)
        self.xsub.rcvhwm = cfg.in_queue()
        self.xsub.maxmsgsize = cfg.max_event_size + 319
        bound = {"publish": bind(self.xsub, ep.publish)}
        self.xpub = self._server_socket(zmq.XPUB)
        self.xpub.sndhwm = cfg.sub_queue()
        self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        # Under CURVE the limit applies to the handshake too (the broker's CURVE_SLACK).
        self.xpub.maxmsgsize = 256 + (CURVE_SLACK if cfg.curve is not None else 0)
        bound["subscribe"] = bind(self.xpub, ep.subscribe)
        self.control = self._server_socket(zmq.ROUTER)
        bound["control"] = bind(self.control, ep.control)
        self.log_sock = self._server_socket(zmq.ROUTER)
        if ep.log:
            bound["log"] = bind(self.log_sock, ep.log)
        self.endpoints = ep.with_(**bound)
        # Sync shadows for the XPUB's sends and _take's reads, without a coroutine per message: an
        # operation on one while a receive is awaited on the socket is followed by a look at the
        # asyncio socket's EVENTS (see to_publishers).
        self._xpub_sync = zmq.Socket.shadow(self.xpub.underlying)
        self._xpub_send = partial(zmq.backend.Socket.send, self._xpub_sync)
        self.splitter = Splitter(cfg.message_bytes())
        if cfg.sub_bytes or cfg.in_bytes:
            log.info("queues capped by their byte budgets: %d messages per subscriber (of up to %d bytes"
                     " of stamp and body), %d per publisher", cfg.sub_queue(), cfg.message_bytes(), cfg.in_queue())
        self._xsub_sync = zmq.Socket.shadow(self.xsub.underlying)
        self.xsub.send(b"\x01")  # subscribe to every publisher (their XPUB waits for it)
        # The subscription again on every accepted connection and handshake (under CURVE, only
        # then is it attached); the connections counted, and announced with lifecycle events.
        peers = self.peers = EdgePeers(self.js, self.subject, lifecycle_events=cfg.lifecycle_events,
                                       resubscribe=lambda: self.to_publishers(b"\x01"))
        self._tasks += [
            asyncio.create_task(peers.watch(self.xsub.get_monitor_socket(IN_EVENTS), inbound=True)),
            asyncio.create_task(peers.watch(self.xpub.get_monitor_socket(OUT_EVENTS), inbound=False)),
        ]

    def _server_socket(self, kind: int) -> zmq.asyncio.Socket:
        assert self.ctx is not None
        sock = self.ctx.socket(kind)
        sock.linger = 0
        if self.config.curve is not None:
            secure_server(sock, self.config.curve)
        return sock

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            await asyncio.wait_for(self.readers.close(), STOP_PATIENCE)
        except Exception as e:
            log.warning("closing the replays' consumers: %s", e or type(e).__name__)
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.nc is not None and not self.nc.is_closed:
            if not self.nc.is_connected:
                log.warning("stopping without a checkpoint: no NATS server is reachable (the next"
                            " checkpoint, or a recount from an older one, covers it)")
            else:
                try:
                    await asyncio.wait_for(self._write_checkpoint(), STOP_PATIENCE)
                except asyncio.TimeoutError:
                    log.warning("no checkpoint at stop: no answer within %g s", STOP_PATIENCE)
            try:
                await asyncio.wait_for(self.nc.close(), STOP_PATIENCE)
            except Exception as e:
                log.warning("closing the NATS connection: %s", e or type(e).__name__)
        if self._auth is not None:
            self._auth.close()
        if self.ctx is not None:
            for sock in (self.xsub, self.xpub):
                try:
                    sock.disable_monitor()
                except zmq.ZMQError:
                    pass
            self.ctx.destroy(linger=0)
            for path in self.endpoints.with_(sessions="", log_feed="").ipc_paths():
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass

    # -- checkpoints -------------------------------------------------------------------------

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
        except logops.Refused as e:
            self.counters["bad_requests"] += 1
            reply = {"ok": False, "code": e.code, "message": str(e)}
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
            "status": "ok", "pid": os.getpid(), "version": self.version, "first_version": self.version_base + 1,
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
                "publishers": self.peers.publishers if self.peers else 0,
                "subscribers": self.peers.subscribers if self.peers else 0,
                "lifecycle_events": self.peers.published if self.peers else 0,
                "curve_refused": self._auth.refused if self._auth is not None else 0,
                "fragmented": self.splitter.sent if self.splitter is not None else 0,
                "config": {"sub_hwm": self.config.sub_hwm, "in_hwm": self.config.in_hwm,
                           "sub_bytes": self.config.sub_bytes, "in_bytes": self.config.in_bytes,
                           "sub_queue": self.config.sub_queue(), "in_queue": self.config.in_queue(),
                           "message_bytes": self.config.message_bytes(),
                           "max_event_size": self.config.max_event_size},
                "endpoints": self.endpoints.names(),
            }
        if op == "seqs":
            matches = compile_matcher(request.get("patterns") or [])
            after = int(request.get("after", 0))
            found = [(t, n) for t, n in self.topic_seq.items() if matches(t)]
            page = found[after : after + SEQS_PAGE]
            return {
                "version": self.version, "first_version": self.version_base + 1, "seqs": {t.decode(): n for t, n in page},
                "next": after + SEQS_PAGE if len(found) > after + SEQS_PAGE else None,
            }
        raise _UnknownOp(f"unknown op {op!r}; known: ping, health, stats, seqs")

    def _backbone_stats(self) -> dict[str, Any]:
        return {
            "stream": self.config.stream, "servers": self.config.servers, "replicas": self.config.replicas,
            "in_flight": self.publisher.in_flight if self.publisher else 0,
            "checkpoint": self.checkpointed, "counted_from": self.base, "version_base": self.version_base,
            "connected_url": str(self.nc.connected_url.geturl()) if self.nc and self.nc.connected_url else None,
            "connection": {k: self.nc.stats[k] for k in ("in_msgs", "in_bytes", "out_msgs", "out_bytes")}
            if self.nc else {},
        }

    async def _log_op(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "replay":
            return await replay.replay(self, request)
        if op == "tail":
            return await replay.tail(self, request)
        if op == "summary":
            return await logops.summary(self, request)
        if op == "publishers":
            return await logops.publishers(self, request)
        if op == "import":
            return await logops.import_(self, request)
        if op == "ping":
            return {"status": "ok", "pid": os.getpid(), "last": self.version}
        if op == "stats":
            info = await self.js.stream_info(self.config.stream)
            self._note_limits(info.config)
            return {
                "events": info.state.messages, "first": info.state.first_seq, "last": info.state.last_seq,
                "trimmed": info.state.first_seq - 1, "retention": self.limits,
                "backbone": self._backbone_stats(), "requests": self.counters["requests"],
                "bad_requests": self.counters["bad_requests"],
            }
        raise _UnknownOp(f"unknown op {op!r}; known: replay, tail, summary, publishers, import, ping, stats"
                         " (served from the stream)")

class _UnknownOp(Exception):
    pass


_LIMITS = {"max_msgs": "retain_events", "max_age": "retain_seconds", "max_bytes": "retain_bytes"}
"""The stream's retention limits and the EdgeConfig fields (``--retain-*`` options) that set them."""


def _same_limit(have: Any, want: Any) -> bool:
    """Whether two limits are the same: none is -1, 0 or None; an age in seconds, to the ms."""
    if not have or have < 0:
        have = 0
    if not want or want < 0:
        want = 0
    return round(have * 1000) == round(want * 1000)


def _limits_text(config: Any, names: dict[str, Any]) -> str:
    return ", ".join(f"{name}={getattr(config, name) if getattr(config, name) and getattr(config, name) > 0 else 'none'}"
                     for name in names if name in _LIMITS)

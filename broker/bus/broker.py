"""The broker: XSUB in, XPUB out; stamps every event with the global version and its topic sequence.

Hot path (DESIGN.md §4.2): compiled ``Socket.recv``/``send`` with int flags, a fixed frame count,
one precompiled ``struct.Struct``, one poll per drained batch. The payload is never decoded. A
message with the wrong frame count, an invalid topic or a body that is not an envelope is counted
and skipped without desynchronising the stream.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import zmq

from broker.bus.config import (
    CONTROL_MAX_SIZE,
    CURVE_SLACK,
    SUBSCRIPTION_MAX_SIZE,
    BrokerConfig,
)
from broker.bus.control import Control
from broker.bus.durable import CONFIRM_DELAY, Durable, Run
from broker.bus.gate import Gate
from broker.bus.intake import Intake
from broker.bus.loglink import LogLink
from broker.bus.memory import trim
from broker.bus.peers import SUBSCRIBE_ALL, Peers
from broker.bus.reservation import Reservation
from broker.bus.split import Splitter
from broker.bus.streams import SessionStreams
from broker.security import Authenticator, secure_server
from broker.sockets import bind
from sdk.transport import configure_context, event_socket
from schemas.envelope import (
    BATCH_PREFIX,
    BODY_MARK,
    CONFIRM,
    IDENTIFIED_MARK,
    IDENTITY_RAW,
    LOG_MARK,
    MAX_BATCH_EVENTS,
    MAX_RUN_BYTES,
    RUN_LENGTH,
    SESSION_PREFIX,
    STAMP,
    SYNC_PREFIX,
    run_stamp,
)
from schemas.topics import is_valid_type

log = logging.getLogger("pryxbus.broker")

# Int constants: pyzmq's enum members cost an attribute lookup and enum arithmetic per use.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_MARK = BODY_MARK[0]
_MARK7 = IDENTIFIED_MARK[0]
_SINGLE_MARKS = (_MARK, _MARK7)
_UINT64 = 0xCF
_IDENTITY_SIZE = IDENTITY_RAW.size
_unpack_identity = IDENTITY_RAW.unpack_from

# pyzmq's Python-level Socket.send (type checks for str, routing ids, groups) costs ~0.1 us per
# frame on top of the compiled one; the hot loop calls the compiled send directly.
_send = zmq.backend.Socket.send
_pack_stamp = STAMP.pack


def _is_body(frame: zmq.Frame) -> bool:
    """Does the frame start with BODY_MARK or IDENTIFIED_MARK? (Copying a small body beats making
    a memoryview.)"""
    size = len(frame)
    return bool(size) and (frame.bytes if size < 2048 else frame.buffer)[0] in _SINGLE_MARKS


BATCH = 4096
"""Events drained per poll before the broker looks at its other sockets (a batch that starts
within them is taken whole)."""
REACH = BATCH + MAX_BATCH_EVENTS
"""Most versions one drain stamps: reserved before it starts."""
_BATCH_MARK = BATCH_PREFIX[0]
CONFIRM_POLL_MS = max(1, int(CONFIRM_DELAY * 1000))
_LOG_ARRIVED = b"\x01" + LOG_MARK
_LOG_LEFT = b"\x00" + LOG_MARK


class Broker(Intake, Gate, LogLink, Control, Peers):
    """One broker process's sockets and loop. Use as a context manager; ``run()`` until ``stop()``."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.version = config.first_version - 1
        self.topic_seq: dict[bytes, int] = {}
        self.malformed = 0
        self.rejected = 0
        self.topics_refused = 0
        self._topics_warned_at: float | None = None  # time.monotonic() of the last warning
        self.syncs = 0
        self.publishers = 0
        self.subscribers = 0
        self._peers_in: set[int] = set()
        self._peers_out: set[int] = set()
        self.lifecycle_events = 0
        self.started = time.time()
        self._running = False
        self._stop_requested = False
        """stop() was called: a run() that starts afterwards returns at once (a SIGTERM that
        arrived before the loop is not forgotten)."""
        self._reservation = Reservation(config.home) if config.home is not None else None
        self._reserved = 1 << 63 if self._reservation is None else self._reservation.mark
        self._reserve_retry_at: float | None = None
        """While set (time.monotonic()), the disk refused the version mark: no events are read."""
        self._reading = False  # whether the poller watches xsub (see _read)
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ping": self._op_ping,
            "health": self._op_ping,
            "stats": self._op_stats,
            "seqs": self._op_seqs,
        }
        self._matched = {}  # the topics matching recent seqs requests (control.py)
        self._streams = SessionStreams()
        self._wanted = self._streams.streams  # the session streams subscribed now (streams.py)
        self._ctx = configure_context(zmq.Context(), config.endpoints)
        self._auth: Authenticator | None = None
        try:
            if config.curve is not None:  # before anything binds: fail closed
                self._auth = Authenticator(self._ctx, config.curve)
            self._bind()
            self._durable = self._durable_path()
        except BaseException:
            if self._auth is not None:
                self._auth.close()
            self._ctx.destroy(linger=0)
            raise

    def _bind(self) -> None:
        cfg, ep, ctx = self.config, self.config.endpoints, self._ctx
        # Headroom over the body limit for the topic frame; an oversized message disconnects
        # its sender (DESIGN.md §4.4), which is why the SDK refuses oversized events first.
        self.max_msg_size = cfg.largest_in()
        self.max_run = max(1, cfg.max_run)
        self.split = Splitter(cfg.message_bytes())
        limit = self.split.limit
        room = limit - STAMP.size - RUN_LENGTH.size * self.max_run if limit else MAX_RUN_BYTES
        self.max_run_body = min(MAX_RUN_BYTES, room) if self.max_run > 1 else 0

        self.xsub = event_socket(ctx.socket(zmq.XSUB))
        self.xsub.linger = 0
        if cfg.curve is not None:
            secure_server(self.xsub, cfg.curve)
        # libzmq counts messages; the byte budgets cap these counts (BrokerConfig.sub_queue).
        self.sub_queue, self.in_queue = cfg.sub_queue(), cfg.in_queue()
        if self.sub_queue != cfg.sub_hwm or self.in_queue != cfg.in_hwm:
            log.info("queues capped by their byte budgets: %d messages per subscriber (of up to %d bytes),"
                     " %d per publisher (of up to %d bytes)", self.sub_queue, cfg.largest_out(),
                     self.in_queue, cfg.largest_in())
        self.xsub.rcvhwm = self.in_queue
        self.xsub.maxmsgsize = self.max_msg_size
        bound = {"publish": bind(self.xsub, ep.publish)}

        self.xpub = event_socket(ctx.socket(zmq.XPUB))  # the log feed's bind copies its options
        self.xpub.linger = 0
        if cfg.curve is not None:
            secure_server(self.xpub, cfg.curve)
        self.xpub.sndhwm = self.sub_queue
        self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every sync subscription, duplicates too
        # Subscribers only send subscriptions, and none longer than a topic can match anything. libzmq
        # keeps ~48 bytes of trie per subscribed byte, so this bounds what one subscription costs
        # (at 4096, 20,000 subscriptions from one raw socket grew the broker by 3.8 GB).
        # Under CURVE the limit applies to the encrypted frames and to the handshake (INITIATE, with
        # its metadata, is ~300 bytes), so it leaves room for them: at 256 every CURVE subscriber
        # was disconnected during its handshake.
        self.xpub.maxmsgsize = SUBSCRIPTION_MAX_SIZE + (CURVE_SLACK if cfg.curve is not None else 0)
        bound["subscribe"] = bind(self.xpub, ep.subscribe)
        if ep.log_feed:
            # A listener copies the socket's options when it binds, so connections to this second
            # endpoint (the event log's) get a deeper queue than every other subscriber's.
            self.xpub.sndhwm = cfg.log_queue()
            bound["log_feed"] = bind(self.xpub, ep.log_feed)
            self.xpub.sndhwm = self.sub_queue

        self.control = ctx.socket(zmq.ROUTER)
        self.control.linger = 0
        if cfg.curve is not None:
            secure_server(self.control, cfg.curve)
        self.control.maxmsgsize = CONTROL_MAX_SIZE
        bound["control"] = bind(self.control, ep.control)
        self.endpoints = ep.with_(**bound)
        """The endpoints, with the ports the system chose for any given as ``tcp://HOST:0``."""

        # Trap §4.1: a bound XSUB does not replay its subscription to publishers that connect
        # later, so re-send it on every new publisher connection.
        watched = zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        self.in_monitor = self.xsub.get_monitor_socket(watched)
        self.out_monitor = self.xpub.get_monitor_socket(watched)
        self._trim_at: float | None = None  # while set, freed memory goes back to the system then
        self._closed_until: float | None = None  # while set, publishers wait for the event log
        self._held: list[tuple[str, dict[str, Any]]] = []  # the broker's own events, meanwhile
        self._poller: zmq.Poller | None = None
        if cfg.await_log > 0:
            self._closed_until = time.monotonic() + cfg.await_log
        else:
            self.xsub.send(SUBSCRIBE_ALL)

    def _durable_path(self) -> Durable:
        """Dedup, confirmations and the unlogged buffer (durable.py). A broker told to await the
        event log expects its acks from the start: nothing is confirmed before the log has it."""
        cfg = self.config
        events = cfg.log_budget_events if cfg.log_hwm <= 0 else min(cfg.log_budget_events, cfg.log_hwm)
        durable = Durable(
            self.xsub, self.xpub, self._send_run,
            budget_bytes=cfg.log_budget, budget_events=events, max_publishers=cfg.max_publishers,
        )
        durable.split = self._streams.split = self.split
        durable.logging = cfg.await_log > 0
        self._log_present = False  # the log's LOG_MARK subscription is in place
        self._seed_pending = cfg.await_log > 0 and bool(cfg.endpoints.log)
        return durable

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Ask ``run()`` to return at its next turn, or at once if it has not started (safe from a
        signal handler)."""
        self._stop_requested = True
        self._running = False

    def close(self) -> None:
        """Close every socket and the context; idempotent. ZeroMQ unlinks its ipc files."""
        if self._ctx.closed:
            return
        for sock in (self.xsub, self.xpub):
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        if self._auth is not None:
            self._auth.close()
        self._ctx.destroy(linger=0)
        own = self.config.endpoints
        for path in own.with_(sessions="", log="").ipc_paths():  # only the sockets we bound
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # -- the loop ----------------------------------------------------------------------------

    def run(self, poll_interval: float = 0.1) -> None:
        """Forward and stamp until ``stop()``."""
        self._running = not self._stop_requested
        self._emit("bus:started", {"pid": os.getpid(), "first_version": self.config.first_version})
        poller = self._poller = zmq.Poller()
        for sock in (self.xpub, self.control, self.in_monitor, self.out_monitor):
            poller.register(sock, zmq.POLLIN)
        self._read()
        xsub, xpub, control = self.xsub, self.xpub, self.control
        timeout_ms = int(poll_interval * 1000)
        durable = self._durable
        while self._running:
            if durable.news:
                durable.send_confirmations()
            try:
                ready = dict(poller.poll(CONFIRM_POLL_MS if durable.news else timeout_ms))
            except zmq.ZMQError as e:
                if e.errno == zmq.EINTR:
                    continue
                raise
            if self._closed_until is not None and time.monotonic() >= self._closed_until:
                self._log_late()
            if self._reserve_retry_at is not None and time.monotonic() >= self._reserve_retry_at:
                self._reserve(self.version + REACH)
            if self._trim_at is not None and time.monotonic() >= self._trim_at:
                self._trim_at = None
                trim()
            if not ready:
                continue
            if xsub in ready:
                if self.version + REACH <= self._reserved or self._reserve(self.version + REACH):
                    self._forward_batch()
            if xpub in ready:
                self._handle_subscriptions()
            if control in ready:
                self._handle_control()
            if self.in_monitor in ready:
                self._handle_monitor(self.in_monitor, inbound=True)
            if self.out_monitor in ready:
                self._handle_monitor(self.out_monitor, inbound=False)
        if self._reservation is not None:
            try:
                self._reservation.write(self.version)  # a clean stop: the next run continues exactly
            except OSError as e:  # a full disk: the reserved mark, already on disk, still holds
                log.warning("cannot write the exact version mark (%s); the next run continues after"
                            " the reserved %d", e, self._reservation.mark)

    def _forward_batch(self) -> None:
        """Stamp and forward up to BATCH events that have already arrived.

        Known topics take the fast path: the topic is received as bytes (the cheapest receive)
        and only the body as a Frame, whose ``more`` flag is free, where ``getsockopt(RCVMORE)``
        costs ~0.5 us in pyzmq. A known topic sent alone is still recognised: what follows it is
        not a body (a body starts with BODY_MARK or IDENTIFIED_MARK; a topic, being ASCII, never does), so that frame
        is carried over as the next message's topic and nothing good is lost. Unknown topics (new
        types and garbage) take the exact path, with RCVMORE. The one case the fast path cannot
        tell apart, a known topic alone followed by a lone non-body frame, counts once as rejected.

        Consecutive events of one topic that are already here go out as one run (PROTOCOL.md):
        one message instead of one each, so the broker and every subscriber handle a message per
        run, not per event. Nothing waits for a run to fill: what is here goes when the socket
        is drained, so a lone event goes at once.
        """
        recv = self.xsub.recv
        getsockopt = self.xsub.getsockopt
        seqs = self.topic_seq
        version = self.version
        max_run, max_body = self.max_run, self.max_run_body
        durable = self._durable
        carried: bytes | None = None  # a frame already read that starts the next message
        keep = durable.logging  # for the event log: the batch is kept, and sent once drained
        admit = durable.admit_logged if keep else durable.admit
        kept_append = durable.batch.append  # each identified event, while kept for the log
        # The publisher admitted last without a log, and its entry in durable.pubs: its next
        # number is stamped here without a call.
        last_pid: bytes | None = None
        last_entry: list[int] | None = None
        inlined = 0
        budget, room_bytes = BATCH, 0
        if keep:  # what the unlogged buffer still takes
            room_events, room_bytes = durable.room()
            budget = min(BATCH, room_events)
        first = True
        runs: list[Run] = []  # delivered together once the batch is drained (durable.py)
        runs_append = runs.append
        # The run being gathered: its topic, first version and sequence, bodies and their sizes.
        run_topic: bytes | None = None
        run_version = run_seq = run_bytes = 0
        bodies: list[zmq.Frame] = []
        sizes: list[int] = []
        try:
            while budget or carried is not None:
                budget = max(budget - 1, 0)
                if carried is None:
                    try:
                        topic = recv(_NOBLOCK)
                    except zmq.Again:
                        break
                else:
                    topic, carried = carried, None
                seq = seqs.get(topic)
                if seq is None and topic[:1] == BATCH_PREFIX:  # a batch (PROTOCOL.md §4.2)
                    batch = self._read_batch(topic)
                    if batch is None:
                        continue
                    topic, body_frame, lengths, identity = batch
                    seq = seqs.get(topic)
                    if seq is None:
                        if len(seqs) >= self.config.max_topics:
                            self._refuse_topic(topic)
                            if identity is not None:
                                durable.skip(identity[0], identity[1], version, identity[2])
                            continue
                        seq = 0
                    if identity is not None and not durable.admit_run(*identity, version + len(lengths)):
                        continue  # stamped before (confirmed again instead), or out of order
                    if bodies:  # the run being gathered goes first
                        if keep:
                            runs_append((run_topic, run_version, run_seq, bodies, sizes, run_bytes))  # type: ignore[arg-type]
                            room_bytes -= run_bytes
                        else:
                            self._send_run(run_topic, run_version, run_seq, bodies, sizes)  # type: ignore[arg-type]
                        run_topic, bodies, sizes = None, [], []
                    n = len(lengths)
                    seqs[topic] = seq + n
                    size = len(body_frame)
                    if keep:
                        runs_append((topic, version + 1, seq + 1, [body_frame], lengths, size))
                        room_bytes -= size
                        if room_bytes <= 0:
                            budget = 0
                    else:
                        self._send_run(topic, version + 1, seq + 1, [body_frame], lengths)
                    version += n
                    budget = max(budget - n + 1, 0)
                    first = False
                    continue
                if seq is None:  # the exact path: RCVMORE still describes the topic frame
                    if not getsockopt(_RCVMORE):
                        self.malformed += 1
                        continue
                    body_frame = recv(_NOBLOCK, False)
                    if body_frame.more:
                        self._skip_rest()
                        continue
                    size = len(body_frame)
                    head = (body_frame.bytes if size < 2048 else body_frame.buffer) if size else b"\0"
                    mark = head[0]
                    if mark == _MARK7:  # identified (PROTOCOL.md §4.1): the identity ends the body
                        if size < _IDENTITY_SIZE + 1:
                            self.rejected += 1
                            continue
                        m1, pid, m2, number = _unpack_identity(head, size - _IDENTITY_SIZE)
                        if m1 != _UINT64 or m2 != _UINT64:
                            self.rejected += 1
                            continue
                        if not is_valid_type(topic):
                            self.rejected += 1
                            durable.skip(pid, number, version)
                            continue
                        if len(seqs) >= self.config.max_topics:
                            self._refuse_topic(topic)
                            durable.skip(pid, number, version)
                            continue
                        if not admit(pid, number, version + 1):
                            continue  # a (publisher, number) already stamped: confirmed again instead
                    elif mark != _MARK or not is_valid_type(topic):
                        self.rejected += 1
                        continue
                    elif len(seqs) >= self.config.max_topics:
                        self._refuse_topic(topic)
                        continue
                    seq = 0
                else:
                    try:
                        body_frame = recv(_NOBLOCK, False)  # a message arrives whole: no wait
                    except zmq.Again:
                        self.malformed += 1  # a known topic alone, and nothing after it
                        break
                    if body_frame.more:  # malformed: 3 or more frames, or a topic sent alone
                        if _is_body(body_frame):
                            self._skip_rest()
                        else:  # the topic came alone; this frame starts the next
                            self.malformed += 1
                            carried = body_frame.bytes
                        continue
                    size = len(body_frame)
                    head = (body_frame.bytes if size < 2048 else body_frame.buffer) if size else b"\0"
                    mark = head[0]
                    if mark != _MARK:
                        if mark != _MARK7 or size < _IDENTITY_SIZE + 1:
                            self.rejected += 1  # two frames, the second not an envelope
                            continue
                        m1, pid, m2, number = _unpack_identity(head, size - _IDENTITY_SIZE)
                        if m1 != _UINT64 or m2 != _UINT64:
                            self.rejected += 1
                            continue
                        if pid == last_pid and number == last_entry[0] + 1:  # type: ignore[index]
                            # Durable.admit's (admit_logged's) usual case, inlined for the
                            # publisher seen last
                            last_entry[0] = number  # type: ignore[index]
                            last_entry[1] = version + 1  # type: ignore[index]
                            if keep:
                                kept_append((version + 1, pid, number))
                            else:
                                inlined += 1
                        else:
                            if keep and last_entry is not None:  # its recency first: admit may forget one
                                durable.seen(last_pid, last_entry)  # type: ignore[arg-type]
                            if not admit(pid, number, version + 1):
                                continue  # a (publisher, number) already stamped: confirmed again instead
                            last_pid, last_entry = pid, durable.pubs.get(pid)
                            if not keep:  # confirmed with the batch (Durable.deliver)
                                durable.touched[pid] = last_entry  # type: ignore[assignment]
                seq += 1
                version += 1
                seqs[topic] = seq
                if topic == run_topic and len(bodies) < max_run and run_bytes + size <= max_body:
                    bodies.append(body_frame)
                    sizes.append(size)
                    run_bytes += size
                    continue
                if bodies:
                    if keep:
                        runs_append((run_topic, run_version, run_seq, bodies, sizes, run_bytes))  # type: ignore[arg-type]
                        room_bytes -= run_bytes
                        if room_bytes <= 0:  # the unlogged buffer is full: this batch ends here
                            budget = 0
                    else:
                        self._send_run(run_topic, run_version, run_seq, bodies, sizes)  # type: ignore[arg-type]
                run_topic, run_version, run_seq, run_bytes = topic, version, seq, size
                bodies = [body_frame]
                sizes = [size]
                if first:  # woken for this one: if it came alone, send it now (the latency path)
                    first = False
                    if not getsockopt(_EVENTS) & _POLLIN:  # no Again raised and caught first
                        break
        finally:
            self.version = version
            durable.identified += inlined
            if not keep:
                if bodies:
                    self._send_run(run_topic, run_version, run_seq, bodies, sizes)  # type: ignore[arg-type]
                if durable.touched or durable.batch or durable.has_news:
                    durable.deliver(runs)  # confirmations only: the runs went as they were made
            else:
                if last_entry is not None:  # its recency, as admit_logged keeps it
                    durable.seen(last_pid, last_entry)  # type: ignore[arg-type]
                if bodies:
                    runs_append((run_topic, run_version, run_seq, bodies, sizes, run_bytes))  # type: ignore[arg-type]
                if runs or durable.batch or durable.has_news:
                    durable.deliver(runs)
                    if durable.full:
                        self._buffer_full()

    def _send_run(self, topic: bytes, version: int, seq: int, bodies: list[zmq.Frame], sizes: list[int]) -> None:
        """Send one event or a batch (zero copy: the body goes out as it came), or a run of events,
        and again on the session streams subscribed (if any) of the sessions they belong to."""
        xpub = self.xpub
        if len(sizes) == 1:
            if sizes[0] > self.split.longest_alone:
                self.split.send(xpub, topic, b"", version, seq, bodies, sizes)
            else:
                _send(xpub, topic, _SNDMORE)
                _send(xpub, _pack_stamp(version, seq), _SNDMORE)
                _send(xpub, bodies[0], 0, False)
        elif len(bodies) == 1:  # a batch
            if self.split.fits(sizes):
                _send(xpub, topic, _SNDMORE)
                _send(xpub, run_stamp(version, seq, sizes), _SNDMORE)
                _send(xpub, bodies[0], 0, False)
            else:
                self.split.send(xpub, topic, b"", version, seq, bodies, sizes)
        else:  # a run gathered here: max_run_body keeps it within the bound
            _send(xpub, topic, _SNDMORE)
            _send(xpub, run_stamp(version, seq, sizes), _SNDMORE)
            _send(xpub, b"".join(bodies), 0)
        if self._wanted:
            self._streams.send(xpub, topic, version, bodies, sizes)

    def _handle_subscriptions(self) -> None:
        """Answer sync subscriptions: the reply proves the subscriber's earlier filters are live."""
        while True:
            try:
                msg = self.xpub.recv(_NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == CONFIRM:
                self._log_ack(msg)
                continue
            if msg == _LOG_ARRIVED:
                self._log_arrived()
            elif msg == _LOG_LEFT:
                self._log_left()
            elif msg[1:3] == SESSION_PREFIX:
                self._streams.subscription(msg)
                continue
            if msg[:1] == b"\x01" and msg[1:].startswith(SYNC_PREFIX):
                self.syncs += 1
                self.xpub.send(msg[1:], _SNDMORE)
                self.xpub.send(STAMP.pack(0, 0), _SNDMORE)
                self.xpub.send(b"")

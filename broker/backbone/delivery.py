"""The edge's hot paths: publishers' events to the stream, and the stream's events to subscribers.

A mixin of :class:`broker.backbone.edge.Edge`, kept apart so that the edge's module stays about
its set-up and its requests. Both directions run without a task, queue or ``Msg`` per event: the
events read from the XSUB in one turn go to NATS as one write (:meth:`StreamPublisher.flush`),
and the ordered consumer's messages come from the connection's :class:`Wire` as they are read;
consecutive events of one type read together go to the XPUB as one run (PROTOCOL.md, as the
broker sends them).
"""

from __future__ import annotations

import array
import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any

import zmq
import zmq.backend

from broker.backbone import stream as layout
from broker.backbone.publishing import StreamPublisher
from broker.bus.split import Splitter
from schemas.envelope import MAX_RUN, MAX_RUN_BYTES, RUN_LENGTH, STAMP, SYNC_PREFIX, run_stamp

if TYPE_CHECKING:
    import zmq.asyncio

    from broker.backbone.edge import EdgeConfig
    from broker.backbone.wire import Wire

_NOBLOCK = int(zmq.NOBLOCK)
_Socket = zmq.backend.Socket
"""pyzmq's compiled socket, under its Python layer ``zmq.Socket``."""
_SNDMORE = int(zmq.SNDMORE)
_ZERO_STAMP = STAMP.pack(0, 0)

DRAIN = 256
"""Events read from publishers per turn before the loop lets its other tasks run."""
SEQ_MEMORY = 4_000_000
"""Versions whose topic_seq the edge remembers for ``replay`` (8 bytes each); older ones are
counted again from a checkpoint."""


class Delivery:
    """The edge's ``_take`` (publishers -> stream) and ``_deliver`` (stream -> subscribers)."""

    if TYPE_CHECKING:
        config: EdgeConfig
        subject: str
        version: int
        topic_seq: dict[bytes, int]
        seq_of: array.array[int]
        seq_base: int
        live_from: int
        checkpointed: int
        checkpoint_every: int
        counters: dict[str, int]
        publisher: StreamPublisher | None
        wire: Wire
        xsub: zmq.asyncio.Socket
        xpub: zmq.asyncio.Socket
        _xpub_send: Any
        _xpub_sync: zmq.Socket
        splitter: Splitter
        _xsub_sync: zmq.Socket
        _caught_up: asyncio.Event
        _checkpointing: bool
        _syncs_look_due: bool

        async def _write_checkpoint(self) -> None: ...

    _run: list[bytes]
    """The bodies of the run being gathered for the XPUB (consecutive versions, one topic)."""
    _run_topic = b""
    _run_version = _run_seq = _run_size = 0

    # -- publishers -> stream ----------------------------------------------------------------

    def to_publishers(self, message: bytes) -> None:
        """Send ``message`` (a confirmation, the subscription again) to every publisher.

        On the asyncio socket, which then schedules the receive ``_take`` awaits on it: any
        operation on a zmq socket may consume that receive's wake-up (the socket's FD is
        edge-triggered), and after one on the sync shadow ``_take`` would wait, events queued,
        until some other command reached the socket."""
        self.xsub.send(message)

    async def _take(self) -> None:
        """Read publishers' events and send them to the stream, a window of them in flight."""
        publisher = self.publisher = StreamPublisher(
            self.wire, self.subject, window=self.config.window, max_event_size=self.config.max_event_size,
            counters=self.counters, confirm=self.to_publishers, version=self.version,
        )
        await publisher.start()
        take, take_now, flush = publisher.take, publisher.take_now, publisher.flush
        # pyzmq's recv_multipart without its Python layer, and each frame's ``more`` instead of
        # getsockopt(RCVMORE) (which builds an enum per call): half its cost per event
        recv = partial(_Socket.recv, self._xsub_sync)
        try:
            while True:
                await take(await self.xsub.recv_multipart())
                for _ in range(DRAIN):
                    try:
                        frame = recv(_NOBLOCK, False)
                    except zmq.Again:
                        break
                    frames = [frame.bytes]
                    while frame.more:
                        frame = recv(_NOBLOCK, False)
                        frames.append(frame.bytes)
                    if not take_now(frames):
                        await take(frames)
                await flush()
                # A receive that finds a message waiting never yields to the loop: without this,
                # nats-py's flusher would not write the publishes until the window filled.
                await asyncio.sleep(0)
        finally:
            publisher.close()

    # -- stream -> subscribers ---------------------------------------------------------------

    async def _deliver_msg(self, msg: Any) -> None:
        """The ordered consumer's callback, for a message the wire left to nats-py."""
        self._deliver(layout.stream_sequence(msg.reply), msg.data)
        self._send_run()

    def _deliver(self, version: int, data: bytes) -> None:
        """Count the event's topic sequence and add it to the run for the XPUB (sent by
        :meth:`_send_run` once the messages read so far are handled)."""
        n = data[0]
        topic = data[1 : 1 + n]
        seqs = self.topic_seq
        seq = seqs.get(topic, 0) + 1
        seqs[topic] = seq
        if version != self.version + 1:  # messages removed from the stream (limits): no seq for them
            self.seq_of.extend([0] * max(0, version - self.version - 1))
        self.version = version
        self.seq_of.append(seq)
        publisher = self.publisher
        if publisher is not None:
            publisher.version = version
            if version >= publisher.held:
                publisher.delivered()
        if len(self.seq_of) > 2 * SEQ_MEMORY:
            del self.seq_of[:SEQ_MEMORY]
            self.seq_base += SEQ_MEMORY
        if version >= self.live_from and not self._caught_up.is_set():
            self._caught_up.set()
        if version > self.live_from:
            body = data[1 + n :]
            run = self._run
            if run and (topic != self._run_topic or version != self._run_version + len(run)
                        or len(run) >= MAX_RUN or self._run_size + len(body) > MAX_RUN_BYTES):
                self._send_run()
                run = self._run
            if not run:
                self._run_topic, self._run_version, self._run_seq, self._run_size = topic, version, seq, 0
            run.append(body)
            self._run_size += len(body)
            self.counters["events_out"] += 1
        if version - self.checkpointed >= self.checkpoint_every and not self._checkpointing:
            self._checkpointing = True
            asyncio.get_running_loop().create_task(self._write_checkpoint())

    def _send_run(self) -> None:
        """Send the run gathered (one event: as a single one) to the XPUB."""
        run = self._run
        if not run:
            return
        self._run = []
        send = self._xpub_send
        if send is None:  # before the sockets are bound: no subscriber to send it to
            return
        splitter = self.splitter
        if splitter.limit and (len(run[0]) > splitter.longest_alone if len(run) == 1
                               else STAMP.size + RUN_LENGTH.size * len(run) + self._run_size > splitter.limit):
            splitter.send(self._xpub_sync, self._run_topic, b"", self._run_version, self._run_seq, run,
                          [len(body) for body in run])
        else:
            self._send_whole(send, run)
        if not self._syncs_look_due:
            self._syncs_look_due = True
            asyncio.get_running_loop().call_soon(self._look_for_syncs)

    def _send_whole(self, send: Any, run: list[bytes]) -> None:
        send(self._run_topic, _SNDMORE)
        if len(run) == 1:
            send(STAMP.pack(self._run_version, self._run_seq), _SNDMORE)
            send(run[0], 0, False)
        else:
            send(run_stamp(self._run_version, self._run_seq, [len(body) for body in run]), _SNDMORE)
            send(b"".join(run), 0, False)

    def _look_for_syncs(self) -> None:
        """After a turn's deliveries: the sends on the XPUB's sync shadow may have consumed the
        wake-up of the receive ``_syncs`` awaits (see :meth:`to_publishers`). The asyncio
        socket's ``get(EVENTS)`` schedules it if a subscription is queued (its ``getsockopt``
        is the sync socket's, and schedules nothing)."""
        self._syncs_look_due = False
        if not self.xpub.closed:
            self.xpub.get(zmq.EVENTS)

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

"""The synchronous Bus: publish, subscribe, sessions. Hides every socket."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import zmq

from schemas.endpoints import Endpoints, HomeNotOwned
from schemas.envelope import BATCH_PREFIX, ENVELOPE_VERSION, WANT_VERSION
from sdk.transport import configure_context
from sdk.wire import (
    SIZE_QUESTION,
    pending_messages,
    check_event,
    check_subscription,
    configure_publisher,
    publish_timed_out,
    publisher_unavailable,
    size_limit,
    topic_of,
    unencodable,
)
from sdk.errors import BusClosed, BusError, InvalidEvent, MessageTooLarge, UnsafeHome
from sdk.event import Event
from sdk.filters import Where, compile_where, event_filter, filtered
from sdk.core.flows import drive
from sdk.core.publishing import (
    DEFAULT_PUBLISH_BUFFER,
    LOOK,
    RECONNECTED,
    WATCH_INTERVAL,
    Batch,
    PublisherCore,
    Resend,
    WaitForBroker,
)
from sdk.request import Requester, connected
from sdk.security import KeyPaths, resolve_client_keys, secure_client_context
from sdk.subscription import Policy, Subscription
from sdk.spare_cpu import CONFIRM_SPIN, spin_looks

_SNDMORE = int(zmq.SNDMORE)
# The compiled send, without pyzmq's Python-level wrapper (~0.1 us per frame).
_send = zmq.backend.Socket.send
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)

DEFAULT_HWM = 10_000
ZERO_COPY_FROM = 64 * 1024
"""Frames this long or longer are sent without a copy (pyzmq copies shorter ones anyway)."""


def resolve_endpoints(home: str | os.PathLike[str] | Endpoints | None) -> Endpoints:
    """A home directory, ``tcp://HOST:PORT``, an Endpoints, or None (``$PRYXBUS_HOME``)."""
    if isinstance(home, Endpoints):
        return home
    try:
        return Endpoints.resolve(home)
    except HomeNotOwned as e:
        raise UnsafeHome(str(e)) from None
    except ValueError as e:
        raise InvalidEvent(str(e)) from e


class Bus(PublisherCore):
    """A connection to a running pryxbus stack. Create with :func:`sdk.connect`.

    Thread-safe: publish, subscribe and session calls may come from several threads.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | Endpoints | None = None,
        *,
        name: str = "component",
        timeout: float = 5.0,
        publish_timeout: float = 10.0,
        hwm: int = DEFAULT_HWM,
        validate: bool = False,
        max_event_size: int | None = None,
        curve: bool | KeyPaths | None = None,
        publish_buffer: int = DEFAULT_PUBLISH_BUFFER,
        spin: float = CONFIRM_SPIN,
    ) -> None:
        self.endpoints = resolve_endpoints(home)
        self.curve = resolve_client_keys(curve, home)
        """The CURVE client keys every socket of this bus uses, or None (plain)."""
        self._init_publisher(
            name=name,
            publish_timeout=publish_timeout,
            validate=validate,
            max_event_size=max_event_size,
            publish_buffer=publish_buffer,
            spin=spin,
        )
        self.timeout = timeout
        self.hwm = hwm
        self._ctx = secure_client_context(configure_context(zmq.Context(), self.endpoints), self.curve)
        self._lock = threading.Lock()
        self._pub: zmq.Socket | None = None
        self._handshakes: zmq.Socket | None = None  # the publisher's monitor (its connections)
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        self.control = Requester(self._ctx, self.endpoints.control, timeout=timeout, retries=1, what="broker")
        self._sessions: Any = None
        self._log: Requester | None = None
        if self._asked_size:
            try:
                self.max_event_size = size_limit(self.control.call(SIZE_QUESTION))
            except BusError:
                self.close()
                raise

    # -- publishing --------------------------------------------------------------------------

    def _open_publisher(self) -> zmq.Socket:
        """Connect the publisher and wait until the broker's subscription arrives (trap §4.1).

        An XPUB publisher sees the broker's subscribe-all message once the connection is live;
        sending before that would be dropped, so the first event after connect() is never lost.
        """
        sock = self._ctx.socket(zmq.XPUB)
        configure_publisher(sock, timeout=self.timeout, publish_timeout=self.publish_timeout, hwm=self.hwm)
        handshakes = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        connected(sock, self.endpoints.publish, "broker")
        if not sock.poll(int(self.timeout * 1000), zmq.POLLIN):
            handshakes.close(linger=0)
            sock.close(linger=0)
            raise publisher_unavailable(self.endpoints.publish, self.timeout)
        sock.recv()  # the broker's subscription
        pending_messages(handshakes)  # this connection's handshake: not a reconnect
        self._pub, self._handshakes = sock, handshakes
        return sock

    def _watch_broker(self, sock: zmq.Socket, now: float) -> None:
        """Run the publisher's watch (:meth:`PublisherCore._watch`) if messages are pending.

        Called at most every WATCH_INTERVAL, so the hot path pays one float comparison per event.

        Raises:
            PublishTimeout: the broker was gone and did not come back within ``publish_timeout``.
        """
        self._watch_at = now + WATCH_INTERVAL
        if sock.getsockopt(_EVENTS) & _POLLIN:
            drive(self._watch(), self._server, self._io)

    def _io(self, step: Any) -> Any:
        """The publisher's own steps (see :mod:`sdk.core.publishing`) on the XPUB."""
        sock = self._pub
        assert sock is not None
        if step is LOOK:
            return pending_messages(sock) if sock.getsockopt(_EVENTS) & _POLLIN else []
        if step is RECONNECTED:
            return bool(pending_messages(self._handshakes))
        if isinstance(step, Resend):
            kept = step.kept
            for i in range(0, len(kept), 2):
                try:
                    sock.send_multipart(kept[i : i + 2])
                except zmq.Again:
                    raise publish_timed_out(self.publish_timeout) from None
            return None
        assert isinstance(step, WaitForBroker)
        start, timeout = time.perf_counter(), step.timeout
        if step.confirming:
            for _ in spin_looks(self.spin, timeout):
                if sock.getsockopt(_EVENTS) & _POLLIN:
                    return True
            timeout -= time.perf_counter() - start  # a spin is part of the wait
            if timeout <= 0:
                return False
        return bool(sock.poll(int(timeout * 1000) + 1, _POLLIN))

    def _topic(self, event_type: str) -> bytes:
        topic = self._topics.get(event_type)
        if topic is None:
            topic = topic_of(event_type, self._topics)
        return topic

    def publish(
        self, event_type: str, payload: Any = None, *, session_id: str | None = None, wait: bool = False
    ) -> int | None:
        """Publish one event. The broker stamps its version.

        The bus numbers the event and keeps it until the broker confirms it (stamped; with an
        event log, on disk in it), sending it again if the broker restarts before that. Blocks
        while the broker is behind (high-water mark reached) or while ``publish_buffer`` bytes
        are unconfirmed, at most ``publish_timeout``.

        Args:
            wait: wait until the broker confirms this event and return its version.

        Returns:
            None, or with ``wait=True`` the version the broker stamped on the event.

        Raises:
            InvalidEvent: bad type, a payload msgpack cannot encode, or (with ``validate=True``)
                a payload that does not match the catalogue.
            MessageTooLarge: the encoded event is over the broker's limit; nothing was sent.
            PublishTimeout: the broker stayed behind for ``publish_timeout``; nothing was sent.
                With ``wait=True``: the event was sent but not confirmed within ``publish_timeout``
                (the bus still keeps it and sends it again if the broker restarts).
            BusUnavailable: the broker could not be reached.
            BusClosed: the bus was closed.
        """
        try:
            topic = self._topics.get(event_type) or self._topic(event_type)
        except TypeError:  # an unhashable "type" (a list, a dict): not a str
            topic = topic_of(event_type, self._topics)  # raises InvalidEvent, as for any other non-str
        if self.validate or (session_id is not None and not isinstance(session_id, str)):
            check_event(event_type, payload, session_id, validate=self.validate)
        with self._lock:
            if self._closed:
                raise BusClosed("bus is closed")
            # sdk.wire.encode_body, PublisherCore._identified and _sent, inlined on the hot path:
            # the next number and the publisher id are >= 2^32 (NUMBER_BASE), so msgpack packs
            # both as uint64s, the identified body of PROTOCOL.md §4.1, in one call
            now = time.time()
            number = self._number + 1
            try:
                body = self._packb(
                    (ENVELOPE_VERSION, now, self.name, session_id, payload, self.publisher_id,
                     number | WANT_VERSION if wait else number)
                )
            except (TypeError, ValueError, OverflowError) as e:
                raise unencodable(e, self.name, session_id) from None
            size = len(body)
            if size > self.max_event_size:
                raise MessageTooLarge(size, self.max_event_size)
            sock = self._pub or self._open_publisher()
            if now >= self._watch_at:
                self._watch_broker(sock, now)
                if size > self.max_event_size:  # a new broker's limit, learnt just now
                    raise MessageTooLarge(size, self.max_event_size)
            if self._kept_bytes + size > self.publish_buffer and self._kept:
                drive(self._room(size), self._server, self._io)
            try:
                _send(sock, topic, _SNDMORE)
            except zmq.Again:
                raise publish_timed_out(self.publish_timeout) from None
            _send(sock, body)  # the rest of a multipart message never blocks
            self._number = number
            self._kept_bytes += size
            self._kept += (topic, body)
            if wait:
                self._wanted[number] = 0
                return drive(self._version(number), self._server, self._io)
            return None

    def flush(self, timeout: float | None = None) -> None:
        """Return once the broker has confirmed every event this bus published before the call.

        Confirmed means stamped, and with an event log in the stack, on disk in the log.

        Args:
            timeout: seconds to wait (default ``publish_timeout``).

        Raises:
            PublishTimeout: some were not confirmed within ``timeout``; the bus still keeps them.
            BusClosed: the bus was closed.
        """
        with self._lock:
            if self._closed:
                raise BusClosed("bus is closed")
            if self._pub is not None:
                drive(self._flush(timeout), self._server, self._io)

    def publish_many(self, events: Iterable[Any]) -> int:
        """Publish events, ``(type, payload)`` or ``(type, payload, session_id)`` each, in order.

        Consecutive events of one type travel as batches (PROTOCOL.md §4.2): one message of up to
        4096 events and 128 KiB, which the broker stamps with consecutive versions at the cost of
        one. Subscribers, the event log and loss detection see each event as if published alone.
        The events of one call share their timestamp. Returns how many events were published.

        Raises:
            InvalidEvent, MessageTooLarge: as for :meth:`publish`, for any of the events; every
                event is checked before any is sent, so then nothing was sent.
            PublishTimeout: the broker stayed behind for ``publish_timeout``; the batches before
                the one that timed out were sent.
            BusUnavailable: the broker could not be reached.
            BusClosed: the bus was closed.
        """
        messages = self._batches(events)
        count = 0
        with self._lock:
            if self._closed:
                raise BusClosed("bus is closed")
            sock = self._pub or self._open_publisher()
            for batch in messages:
                now = time.time()
                if now >= self._watch_at:
                    self._watch_broker(sock, now)
                    if batch.size > self.max_event_size:  # a new broker's limit, learnt just now
                        raise MessageTooLarge(batch.size, self.max_event_size)
                if self._kept_bytes + batch.size > self.publish_buffer and self._kept:
                    drive(self._room(batch.size), self._server, self._io)
                try:
                    _send(sock, BATCH_PREFIX + batch.topic, _SNDMORE)
                except zmq.Again:
                    raise publish_timed_out(self.publish_timeout) from None
                _send(sock, batch.lengths, _SNDMORE)
                _send(sock, batch.joined, _SNDMORE, batch.size < ZERO_COPY_FROM)
                _send(sock, self._batch_identity())
                self._sent_batch(batch)
                count += len(batch.bodies)
        return count

    def batch(self, flush_every: int = 4096) -> Batch:
        """Gather events and publish them as batches: ``with bus.batch() as batch:``
        ``batch.publish(type, payload)`` (as :meth:`publish`); sent when the block ends, and every
        ``flush_every`` events on the way. An exception in the block discards what is not sent yet."""
        return Batch(self.publish_many, flush_every)

    # -- subscribing -------------------------------------------------------------------------

    def subscribe(
        self,
        *patterns: str,
        policy: Policy = "drop",
        hwm: int | None = None,
        timeout: float | None = None,
        since: int | None = None,
        session_id: str | None = None,
        where: Where = None,
    ) -> Subscription:
        """Subscribe to events whose type matches any pattern (none, or ``**``: every event).

        Returns only once the subscription is live at the broker: any event published after
        this returns is delivered (unless the subscription falls behind).

        Args:
            patterns: exact types, ``*`` for one segment, a final ``**`` for one or more; at most
                ``schemas.topics.MAX_PATTERNS`` (10,000).
            policy: ``"drop"`` ends the subscription with SlowSubscriberError on the first loss;
                ``"count"`` keeps going and counts losses in ``Subscription.lost``;
                ``"recover"`` fetches lost events from the event log and delivers them in
                version order (SlowSubscriberError only if the log cannot supply them).
            hwm: the size of this subscription's own receive queue, in broker messages (one
                event, or under load a run of up to 32). The broker queues up to its
                ``--sub-hwm`` messages more for it: events are lost once both are full.
            since: first deliver every logged event with a version above this one, then live
                events, with no gap and no duplicate at the seam (needs the event log).
            session_id: only events of this session.
            where: only events for which this is true: a callable taking the Event, or a JMESPath
                expression (a str) over ``type``, ``version``, ``seq``, ``ts``, ``source``,
                ``session_id`` and ``payload`` (docs/sdk.md, "Filters"). It runs after the
                sequences are checked, so losses are still seen exactly.

        Raises:
            InvalidEvent: an invalid pattern (or more than 10,000), policy, hwm, since,
                session_id or where expression (nothing is sent then).
            BusUnavailable: the broker (or, with ``since``, the event log) did not answer in time.
            BusTimeout: with ``since``, the event log did not catch up with the broker in time.
        """
        checked = check_subscription(patterns, policy, hwm=hwm, since=since)
        keep = event_filter(where, session_id)
        if self._closed:
            raise BusClosed("bus is closed")
        sub = Subscription(
            self,
            checked,
            policy=policy,
            hwm=self.hwm if hwm is None else hwm,
            timeout=self.timeout if timeout is None else timeout,
            since=since,
            seam_timeout=sub_timeout(self, timeout),
            keep=keep,
            session_id=session_id if stream_wanted(session_id, policy) and self._has_streams() else None,
        )
        with self._lock:
            self._subscriptions.add(sub)
        return sub

    def _has_streams(self) -> bool:
        """Whether the broker serves session streams (PROTOCOL.md §5.1; an edge, for one, does not:
        then ``session_id=`` is filtered in the SDK)."""
        return bool(self.control.call({"op": "ping"}).get("session_streams"))

    # -- the event log -----------------------------------------------------------------------

    @property
    def log(self) -> Requester:
        """The event log client: ``bus.log.call({"op": ...}, timeout=, retries=)`` returns the result.

        Raises:
            BusUnavailable: the stack has no event log endpoint.
        """
        if self._log is None:
            from sdk.replay import log_client

            with self._lock:
                if self._log is None:
                    self._log = log_client(Requester, self._ctx, self.endpoints.log, timeout=self.timeout)
        return self._log

    def replay(
        self,
        *patterns: str,
        since: int = 0,
        until: int | None = None,
        session_id: str | None = None,
        ts_from: float | None = None,
        ts_until: float | None = None,
        where: Where = None,
    ) -> Iterator[Event]:
        """Logged events with ``since < version <= until``, in version order (a lazy iterator).

        Args:
            patterns: as for :meth:`subscribe`; none means every event.
            since: exclusive lower bound on the version (0: from the oldest logged event).
            until: inclusive upper bound; None: up to the newest logged event at each page.
            session_id: only events published with this session id.
            ts_from, ts_until: only events whose publisher timestamp is in ``[ts_from, ts_until)``.
            where: as for :meth:`subscribe` (evaluated here, on the events the log sends).

        Raises:
            InvalidEvent: an invalid pattern or where expression.
            BusUnavailable: the event log did not answer.
        """
        from sdk.replay import replay

        checked = check_subscription(patterns, "drop")
        keep = compile_where(where)
        return filtered(replay(
            self.log,
            checked,
            since=since,
            until=until,
            session_id=session_id,
            ts_from=ts_from,
            ts_until=ts_until,
        ), keep)

    def log_tail(self, *patterns: str, limit: int = 10, session_id: str | None = None) -> list[Event]:
        """The newest ``limit`` logged events matching ``patterns``, oldest first.

        Raises:
            InvalidEvent: an invalid pattern.
            BusUnavailable: the event log did not answer.
        """
        from sdk.session_archive import log_tail

        checked = check_subscription(patterns, "drop")
        return drive(log_tail(checked, limit=limit, session_id=session_id), self._server)

    def log_summary(
        self, *, bucket: float | None = None, ts_from: float | None = None, ts_until: float | None = None
    ) -> dict[str, Any]:
        """Bus-wide analytics from the event log: events by type, first/last activity, and with
        ``bucket`` (seconds) ``buckets``: ``[start, type, count]`` rows (events per type over time).

        Raises:
            BusUnavailable: the event log did not answer.
        """
        from sdk.session_archive import bus_summary

        return drive(bus_summary(bucket=bucket, ts_from=ts_from, ts_until=ts_until), self._server)

    def log_stats(self) -> dict[str, Any]:
        """The event log's counters: events kept, first/last version, gaps and losses, retention.

        Raises:
            BusUnavailable: the event log did not answer.
        """
        return self.log.call({"op": "stats"})

    def _server(self, name: str) -> Requester:
        """The client of a server a flow asks (``"control"``, ``"log"``)."""
        return self.control if name == "control" else self.log

    def _forget(self, sub: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(sub)

    # -- the rest ----------------------------------------------------------------------------

    @property
    def sessions(self) -> Any:
        """The session service client (``create``, ``get``, ``list``, ``ensure``, ...)."""
        if self._sessions is None:
            from sdk.sessions import SessionClient

            with self._lock:
                if self._sessions is None:
                    self._sessions = SessionClient(
                        self._ctx, self.endpoints.sessions, timeout=self.timeout, log=lambda: self.log
                    )
        return self._sessions

    def stats(self) -> dict[str, Any]:
        """The broker's counters (events in/out, per topic, rejects, peers)."""
        return self.control.call({"op": "stats"})

    def close(self) -> None:
        """Close every subscription, then the bus; idempotent. Waits first, at most ``timeout``, for
        the broker to confirm what this bus published (a warning says how many it did not)."""
        with self._lock:
            if self._closed:
                return
            if self._pub is not None:
                try:
                    drive(self._closing(self.timeout), self._server, self._io)
                except BusError:  # the wait is best effort: closing goes on
                    pass
            self._closed = True
            subs = list(self._subscriptions)
        for sub in subs:
            sub.close()
        with self._lock:
            if self._sessions is not None:
                self._sessions.close()
            if self._log is not None:
                self._log.close()
            self.control.close()
            if self._pub is not None:
                self._pub.disable_monitor()
                self._handshakes.close(linger=0)  # type: ignore[union-attr]
                self._pub.close()  # lingers so queued events still reach the broker
                self._pub = self._handshakes = None
        self._ctx.term()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_wanted(session_id: str | None, policy: str) -> bool:
    """Whether a subscription asks for a session stream: a session, and not ``recover`` (which
    needs every version, so it filters the session itself)."""
    return session_id is not None and policy != "recover"


def sub_timeout(bus: Bus, timeout: float | None) -> float:
    return bus.timeout if timeout is None else timeout


def connect(
    home: str | os.PathLike[str] | Endpoints | None = None, *, name: str = "component", **options: Any
) -> Bus:
    """Connect to the stack in ``home`` (default ``$PRYXBUS_HOME``) or at ``tcp://HOST:PORT``.

    Options are keyword-only, in seconds: ``name``, ``timeout``, ``publish_timeout``, ``hwm``,
    ``validate``, ``publish_buffer`` (bytes of unconfirmed events kept to send again, default
    16 MiB; ``publish`` waits for confirmations past it), ``spin`` (how long a wait for a
    confirmation busy-polls while a CPU is spare, default 0.001; 0 never), and ``curve``: None (the default) uses CURVE when the home holds
    ``keys/client.key_secret`` and ``keys/server.key``; False never; True requires the home's
    keys; ``sdk.KeyPaths(client_secret, server_public)`` gives the files (for a remote client).

    Raises:
        BusUnavailable: the broker did not answer within ``timeout`` (a ``--curve`` broker that
            does not let these keys in never answers), or CURVE keys cannot be loaded.
        UnsafeHome: ``home`` belongs to another user, or other users can write it.
    """
    return Bus(home, name=name, **options)

"""The publisher logic both buses share (sync ``sdk.Bus``, asyncio ``sdk.aio.Bus``), socket-free.

Everything publish does besides the send itself: the topic cache and checks, encoding with the
size limit, and watching the broker — when the publisher's XPUB shows the broker's subscription
withdrawn, wait for a broker to subscribe again (counting the outage), and ask a broker that
(re)subscribed for its event size limit. The watch is a flow (:mod:`sdk.core.flows`) that yields
:data:`LOOK`, :class:`WaitForBroker` and an :class:`~sdk.core.flows.Ask` of the control endpoint;
each bus drives it with its own sockets. The sync bus inlines the encoding on its hot path.
"""

from __future__ import annotations

import time
from typing import Any, Final, NamedTuple

import msgpack

from schemas.envelope import DEFAULT_MAX_EVENT_SIZE
from sdk.errors import BusError, MessageTooLarge
from sdk.core.flows import Ask, Flow
from sdk.wire import SIZE_QUESTION, check_event, encode_body, publish_timed_out, size_limit, topic_of

WATCH_INTERVAL = 0.005
"""Seconds between two looks (one getsockopt) at whether the broker is still subscribed."""


class _Look:
    def __repr__(self) -> str:
        return "LOOK"


LOOK: Final = _Look()
"""A watch step: read every pending (un)subscription on the XPUB without waiting; send back None
if there was none, else whether the newest says the broker is there (``sdk.wire.broker_subscribed``)."""


class WaitForBroker(NamedTuple):
    """A watch step: wait up to ``timeout`` seconds for an (un)subscription; send back whether one came."""

    timeout: float


class PublisherCore:
    """The state and rules of a bus's publisher; :class:`sdk.Bus` and :class:`sdk.aio.Bus` subclass it.

    Attributes:
        max_event_size: the broker's limit on an encoded event, asked again whenever a broker
            (re)subscribes (unless given to ``connect``).
        broker_outages: times a publish found the broker gone and waited for it to come back.
    """

    def _init_publisher(
        self, *, name: str, publish_timeout: float, validate: bool, max_event_size: int | None
    ) -> None:
        self.name = name
        self.publish_timeout = publish_timeout
        self.validate = validate
        self.max_event_size = int(max_event_size or DEFAULT_MAX_EVENT_SIZE)
        self.broker_outages = 0
        self._asked_size = max_event_size is None
        self._topics: dict[str, bytes] = {}
        self._packb = msgpack.Packer(use_bin_type=True).pack
        self._watch_at = 0.0  # when publish next looks for the broker's (un)subscription

    def _checked_topic(self, event_type: str, payload: Any, session_id: str | None) -> bytes:
        """The topic frame of an event, after the checks besides encoding.

        Raises:
            InvalidEvent: bad type or session id, or (with ``validate``) a payload that does not
                match the catalogue.
        """
        topic = topic_of(event_type, self._topics)
        check_event(event_type, payload, session_id, validate=self.validate)
        return topic

    def _body(self, payload: Any, session_id: str | None) -> bytes:
        """The body frame of an event, checked against the current size limit.

        Raises:
            InvalidEvent: a payload (or source, session id) msgpack cannot encode.
            MessageTooLarge: the encoded event is over the broker's limit.
        """
        return encode_body(self._packb, self.name, session_id, payload, self.max_event_size)

    def _check_size(self, body: bytes) -> None:
        """Raise MessageTooLarge if a new broker's limit, learnt just now, refuses ``body``."""
        if len(body) > self.max_event_size:
            raise MessageTooLarge(len(body), self.max_event_size)

    def _watch(self) -> Flow[None]:
        """React to (un)subscriptions pending on the publisher (a look is due: WATCH_INTERVAL).

        A connecting XPUB keeps its queue across a reconnect, so events published while the
        broker restarts wait for the new one. But an XPUB with no subscriber at all silently drops
        what it is given: should the broker's subscription be withdrawn (``\\x00``), wait for a
        broker to subscribe again (``\\x01``), at most ``publish_timeout``.

        Raises:
            PublishTimeout: the broker did not come back within ``publish_timeout``.
        """
        there = yield LOOK
        if there is None:
            return
        if not there:
            self.broker_outages += 1
            deadline = time.monotonic() + self.publish_timeout
            while not there:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not (yield WaitForBroker(remaining)):
                    raise publish_timed_out(self.publish_timeout)
                there = bool((yield LOOK))
        yield from self._relearn_limit()

    def _relearn_limit(self) -> Flow[None]:
        """A broker subscribed again: perhaps a restarted one with a smaller ``--max-event-size``,
        whose MAXMSGSIZE would drop this connection (and what is queued on it) for a bigger event.
        Ask it; without an answer the old limit stays (the next subscription asks again)."""
        if not self._asked_size:
            return
        try:
            self.max_event_size = size_limit((yield Ask("control", SIZE_QUESTION, retries=0)))
        except BusError:
            pass

"""Session streams (PROTOCOL.md §5.1): a second copy of each event of a session that a subscriber
asked for by session, under a topic that starts with the session, so ZeroMQ's prefix match at the
XPUB keeps every other session's events off that subscriber's socket.

The broker learns which sessions are wanted from the subscriptions it sees (its XPUB is verbose):
``b"\\x01" + SESSION_PREFIX + key + b"\\x00" + type prefix``. While none is wanted, the hot loop pays
one dict look per run sent; the bodies are looked at (up to their session id) only while some are.
Each stream numbers its events per type (its own ``topic_seq``), so a session subscriber checks
its losses exactly among what it asked for, as any subscriber does (§9).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from broker.bus.split import Splitter
from schemas.envelope import RESEND_STAMP_PAD, SESSION_PREFIX, STAMP, run_stamp, session_key, session_of
from schemas.topics import compile_matcher

_SNDMORE = int(zmq.SNDMORE)
_send = zmq.backend.Socket.send
_pack_stamp = STAMP.pack
_HEAD = len(SESSION_PREFIX)


NEEDLES = 8


def _packed_str(data: bytes) -> bytes:
    """``data`` as msgpack's str (at most 255 bytes: what a plain session key holds)."""
    n = len(data)
    return bytes([0xA0 | n]) + data if n < 32 else b"\xd9" + bytes([n]) + data


class Stream:
    """One session's stream: the subscription prefixes that want it and its per-type sequences."""

    __slots__ = ("head", "prefixes", "seqs")

    def __init__(self, key: bytes) -> None:
        self.head = SESSION_PREFIX + key + b"\x00"
        self.prefixes: set[bytes] = set()
        self.seqs: dict[bytes, int] = {}


class SessionStreams:
    """The session streams subscribers want now, keyed by session key."""

    def __init__(self) -> None:
        self.split = Splitter(0)
        """How a copy longer than a message goes (the broker's, set once it knows its budget)."""
        self.streams: dict[bytes, Stream] = {}
        self.copies = 0
        """Events sent on a session stream (each is also sent on its type's topic)."""
        self._keys: dict[bytes, bytes] = {}  # session id -> key, for the ids seen lately
        self._needles: tuple[bytes, ...] | None = None
        """While at most NEEDLES sessions with plain keys are wanted, their ids as msgpack encodes
        them: a small body that holds none of these bytes is of no wanted session (one C search
        each instead of reading the body's header in Python); None: read every header."""

    def subscription(self, msg: bytes) -> None:
        """A subscription message from the XPUB (``b"\\x01"`` or ``b"\\x00"`` + prefix) whose prefix
        starts with SESSION_PREFIX. XPUB passes every subscribe but only the last unsubscribe of a
        prefix, so the wanted prefixes are a set. A prefix without a complete key is ignored."""
        rest = msg[1 + _HEAD :]
        end = rest.find(b"\x00")
        if end <= 0:
            return
        key = rest[:end]
        if msg[:1] == b"\x01":
            stream = self.streams.get(key)
            if stream is None:
                stream = self.streams[key] = Stream(key)
            stream.prefixes.add(rest)
        else:
            stream = self.streams.get(key)
            if stream is not None:
                stream.prefixes.discard(rest)
                if not stream.prefixes:
                    del self.streams[key]
        keys = list(self.streams)
        if len(keys) <= NEEDLES and all(k[:1] == b"=" for k in keys):
            self._needles = tuple(_packed_str(k[1:]) for k in keys)
        else:
            self._needles = None

    def key_of(self, session_id: bytes) -> bytes:
        key = self._keys.get(session_id)
        if key is None:
            if len(self._keys) >= 4096:
                self._keys.clear()
            key = self._keys[session_id] = session_key(session_id)
        return key

    def send(self, xpub: zmq.Socket, topic: bytes, version: int, bodies: list[Any], sizes: list[int]) -> None:
        """Send the events of one run (or one event) that belong to a wanted session again on that
        session's stream: consecutive events of one session go as one run. A batch (PROTOCOL.md §4.2:
        one frame holding several bodies, ``sizes`` their lengths) is taken apart first."""
        if len(bodies) != len(sizes):
            whole = bodies[0] if type(bodies[0]) is bytes else bodies[0].bytes
            pieces, offset = [], 0
            for size in sizes:
                pieces.append(whole[offset : offset + size])
                offset += size
            bodies = pieces
        streams = self.streams
        needles = self._needles
        group: Stream | None = None
        first = start = 0
        for i, body in enumerate(bodies):
            data = body if type(body) is bytes else (body.bytes if sizes[i] < 2048 else body.buffer)
            stream = None
            if needles is not None and type(data) is bytes:
                for needle in needles:
                    if needle in data:
                        sid = session_of(data)
                        stream = None if sid is None else streams.get(self.key_of(sid))
                        break
            else:
                sid = session_of(data)
                stream = None if sid is None else streams.get(self.key_of(sid))
            if stream is not group:
                if group is not None:
                    self._send_group(xpub, group, topic, first, bodies[start:i], sizes[start:i])
                group, first, start = stream, version + i, i
        if group is not None:
            self._send_group(xpub, group, topic, first, bodies[start:], sizes[start:])

    def _send_group(
        self, xpub: zmq.Socket, stream: Stream, topic: bytes, version: int, bodies: list[Any], sizes: list[int]
    ) -> None:
        n = len(bodies)
        seqs = stream.seqs
        seq = seqs.get(topic, 0) + 1
        seqs[topic] = seq + n - 1
        self.copies += n
        if self.split.needs(sizes):
            self.split.send(xpub, stream.head + topic, RESEND_STAMP_PAD, version, seq, bodies, sizes)
            return
        _send(xpub, stream.head + topic, _SNDMORE)
        if n == 1:
            _send(xpub, RESEND_STAMP_PAD + _pack_stamp(version, seq), _SNDMORE)
            _send(xpub, bodies[0], 0, False)
        else:
            _send(xpub, RESEND_STAMP_PAD + run_stamp(version, seq, sizes), _SNDMORE)
            _send(xpub, b"".join(bodies), 0)

    def seqs(self, session_id: str, patterns: list[str]) -> dict[str, int]:
        """The stream's sequence of each type matching ``patterns`` ({} while nobody wants it)."""
        stream = self.streams.get(session_key(session_id.encode("utf-8")))
        if stream is None:
            return {}
        matches: Callable[[bytes], bool] = compile_matcher(patterns)
        return {t.decode(): n for t, n in stream.seqs.items() if matches(t)}

    def stats(self) -> dict[str, int]:
        return {"sessions": len(self.streams), "copies": self.copies}

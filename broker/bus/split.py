"""Delivering what does not fit in one message (schemas/fragments.py): a run is split between its
events into runs that fit, and an event that alone does not fit goes as fragments. The hot loop
sends everything else itself; only a batch or an event over MESSAGE_BYTES comes here."""

from __future__ import annotations

from typing import Any

import zmq

from schemas.envelope import STAMP, run_stamp
from schemas.fragments import FRAGMENT_PART, MESSAGE_BYTES, fragment_stamps

_SNDMORE = int(zmq.SNDMORE)
_send = zmq.backend.Socket.send
_RUN_HEAD = STAMP.size
_LENGTH = 4

LONGEST_ALONE = MESSAGE_BYTES - STAMP.size
"""The longest body sent whole as a single event; a longer one goes as fragments."""


def fits(sizes: list[int]) -> bool:
    """Do these events fit in one message (a run's stamp and their bodies)?"""
    n = len(sizes)
    return (_RUN_HEAD + (_LENGTH * n if n > 1 else 0) + sum(sizes)) <= MESSAGE_BYTES


def needs_split(sizes: list[int]) -> bool:
    """Must the events of a run (or one event) of these sizes go through :func:`send_split`?"""
    return sizes[0] > LONGEST_ALONE if len(sizes) == 1 else not fits(sizes)


def send_split(
    xpub: zmq.Socket, topic: bytes, pad: bytes, version: int, seq: int, bodies: list[Any], sizes: list[int]
) -> int:
    """Send the events of one run (``bodies`` one per event, or a batch's single frame holding
    them all) as messages of at most MESSAGE_BYTES after ``pad``; returns how many messages."""
    if len(bodies) != len(sizes):  # a batch: one frame, cut between its bodies
        whole = _view(bodies[0])
        bodies, offset = [], 0
        for size in sizes:
            bodies.append(whole[offset : offset + size])
            offset += size
    sent = start = group_bytes = 0
    for i, size in enumerate(sizes):
        if _RUN_HEAD + size > MESSAGE_BYTES:  # alone too big: its fragments, after what came before
            if i > start:
                sent += _send_group(xpub, topic, pad, version + start, seq + start, bodies[start:i], sizes[start:i])
            sent += _send_fragments(xpub, topic, pad, version + i, seq + i, _view(bodies[i]))
            start, group_bytes = i + 1, 0
        elif _RUN_HEAD + _LENGTH * (i - start + 1) + group_bytes + size > MESSAGE_BYTES:
            sent += _send_group(xpub, topic, pad, version + start, seq + start, bodies[start:i], sizes[start:i])
            start, group_bytes = i, size
        else:
            group_bytes += size
    if start < len(sizes):
        sent += _send_group(xpub, topic, pad, version + start, seq + start, bodies[start:], sizes[start:])
    return sent


def _view(body: Any) -> memoryview:
    return body.buffer if isinstance(body, zmq.Frame) else memoryview(body)


def _send_group(
    xpub: zmq.Socket, topic: bytes, pad: bytes, version: int, seq: int, bodies: list[Any], sizes: list[int]
) -> int:
    _send(xpub, topic, _SNDMORE)
    if len(bodies) == 1:
        _send(xpub, pad + STAMP.pack(version, seq), _SNDMORE)
        _send(xpub, bodies[0], 0)
    else:
        _send(xpub, pad + run_stamp(version, seq, sizes), _SNDMORE)
        _send(xpub, b"".join(bodies), 0)
    return 1


def _send_fragments(xpub: zmq.Socket, topic: bytes, pad: bytes, version: int, seq: int, body: memoryview) -> int:
    stamps = fragment_stamps(version, seq, len(body))
    for i, stamp in enumerate(stamps):
        _send(xpub, topic, _SNDMORE)
        _send(xpub, pad + stamp, _SNDMORE)
        _send(xpub, body[i * FRAGMENT_PART : (i + 1) * FRAGMENT_PART], 0)
    return len(stamps)

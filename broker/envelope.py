"""The envelope of a request that reached a ROUTER socket, shared by every server part."""

from __future__ import annotations


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Envelope and body of a ROUTER message: up to the first empty frame after the identity.

    A REQ client sends ``[b"", request]``, so a well-formed request has exactly one body frame; the
    envelope goes back in front of the reply, whatever the body was.
    """
    for i in range(1, len(frames)):
        if not frames[i]:
            return frames[: i + 1], frames[i + 1 :]
    return frames[:1], frames[1:]

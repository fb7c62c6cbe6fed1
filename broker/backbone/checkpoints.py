"""The edge's checkpoints of the per-topic sequences: (version, every topic's sequence) in the
stream's key-value bucket (key ``seqs``, its history the older ones), written every
``checkpoint_seconds`` while events flow. Every edge counts the same from the stream, so whichever
writes, the values are the same; a (re)starting edge counts on from the newest, and a replay of
older versions from the newest at or below them.

A mixin of :class:`broker.backbone.edge.Edge`, kept apart so that the edge's module stays about
its lifecycle and requests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgpack

from broker.backbone import stream as layout

if TYPE_CHECKING:
    from broker.backbone.edge import EdgeConfig

log = logging.getLogger("pryxbus.edge")


class Checkpoints:
    """Reading and writing the bucket's checkpoints."""

    config: EdgeConfig
    kv: Any
    version: int
    topic_seq: dict[bytes, int]
    counters: dict[str, int]
    base: int
    base_seqs: dict[bytes, int]
    checkpointed: int
    _checkpointing: bool

    async def checkpoint(self, at_most: int | None = None) -> tuple[int, dict[bytes, int]]:
        """The newest checkpoint (version, seqs), or with ``at_most`` the newest at or below it."""
        for version, seqs in await self._checkpoints_kept(newest_only=at_most is None):
            if at_most is None or version <= at_most:
                return version, seqs
        return 0, {}

    async def checkpoint_at_least(self, version: int) -> tuple[int, dict[bytes, int]] | None:
        """The oldest checkpoint at or above ``version`` among those kept, or the one this edge
        started from; None if there is none."""
        found = [(v, seqs) for v, seqs in await self._checkpoints_kept(newest_only=False) if v >= version]
        if self.base >= version:
            found.append((self.base, dict(self.base_seqs)))
        return min(found, key=lambda c: c[0]) if found else None

    async def _checkpoints_kept(self, *, newest_only: bool) -> list[tuple[int, dict[bytes, int]]]:
        """The checkpoints in the bucket, newest first (only the newest with ``newest_only``)."""
        from nats.js.errors import KeyNotFoundError, NoKeysError

        try:
            if newest_only:
                entries = [await self.kv.get(layout.CHECKPOINT_KEY)]
            else:
                entries = list(reversed(await self.kv.history(layout.CHECKPOINT_KEY)))
        except (KeyNotFoundError, NoKeysError):
            return []
        kept = []
        for entry in entries:
            if entry.value:
                version, seqs = msgpack.unpackb(entry.value, raw=True, strict_map_key=False)
                kept.append((int(version), dict(seqs)))
        return kept

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

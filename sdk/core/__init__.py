"""The socket-free core of a subscription, shared by the sync and the asyncio fronts.

:mod:`sdk.core.decoding` turns delivered frames into Events and keeps the per-topic state;
:mod:`sdk.core.flows` holds the cold paths (handshake, seam, gap fill, catch-up, replay paging)
as generators that yield the I/O step they need and receive its result, which each front performs.
"""

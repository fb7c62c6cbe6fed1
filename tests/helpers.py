"""Test helpers: waiting on a condition without sleeping blindly, and raw-socket utilities."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import zmq

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "condition",
) -> T:
    """Call ``probe()`` until ``done(value)``; return that value, or fail showing the last value seen.

    The short wait between probes is a poll interval, not a synchronisation sleep.
    """
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while True:
        value = probe()
        if done(value):
            return value
        seen.append(value)
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:g}s; last seen: {seen[-1]!r}")
        threading.Event().wait(interval)  # sync-ok: polling interval between probes


def control(ctx: zmq.Context, endpoint: str, request: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """One raw control request (REQ + msgpack, as PROTOCOL.md §8 says); returns the whole reply."""
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb(request, use_bin_type=True))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise AssertionError(f"no control reply to {request!r} within {timeout:g}s")
        return msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close()


def stats(ctx: zmq.Context, endpoint: str) -> dict[str, Any]:
    reply = control(ctx, endpoint, {"op": "stats"})
    assert reply["ok"], reply
    return reply["result"]


def wait_stats(
    ctx: zmq.Context, endpoint: str, done: Callable[[dict[str, Any]], bool], *, what: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Poll the broker's stats until ``done(stats)``."""
    return wait_for(lambda: stats(ctx, endpoint), done, timeout=timeout, what=what)


def raw_publisher(ctx: zmq.Context, endpoint: str, *, timeout: float = 5.0) -> zmq.Socket:
    """An XPUB publisher connected to the broker and ready to send (PROTOCOL.md §4)."""
    sock = ctx.socket(zmq.XPUB)
    sock.linger = 1000
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.sndtimeo = int(timeout * 1000)
    sock.connect(endpoint)
    assert sock.poll(int(timeout * 1000), zmq.POLLIN), "the broker's subscription never arrived"
    assert sock.recv() == b"\x01"
    return sock


def collect(sub: Any, n: int, *, timeout: float = 5.0) -> list[Any]:
    """Receive exactly ``n`` events from an SDK subscription (each receive has a timeout)."""
    return [sub.recv(timeout=timeout) for _ in range(n)]


def python_process(code: str, *args: str, stdin: bool = False) -> "subprocess.Popen[str]":
    """Start ``python -c code ARGS`` with the repo importable; stdout/stderr (and stdin) piped, text."""
    import os
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "PYTHONPATH": repo},
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def finish(proc: "subprocess.Popen[str]", *, timeout: float = 20.0) -> str:
    """Wait for a helper process, assert it exited 0, return its stdout."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"helper process failed ({proc.returncode}):\n{err}"
    return out


PUBLISHER = """
import sys, sdk
home, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
types = sys.argv[4:] or ["load:event"]
with sdk.connect(home, name=name) as bus:
    for i in range(n):
        bus.publish(types[i % len(types)], {"pub": name, "i": i})
"""
"""A publisher process: ``python -c PUBLISHER HOME NAME N [TYPE...]`` publishes N events and exits."""

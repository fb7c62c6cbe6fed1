"""Side processes: each publisher, subscriber, echo or client of a scenario runs in its own process.

A side is a forked child running a function ``target(conn, *args)`` that talks to the runner over a
pipe: it sends ``("ready", info)`` when set up, may wait for ``"go"``, and ends with
``("result", data)``. An exception in the child comes back as ``("error", text)``. Fork keeps the
start-up cheap (no re-import); the runner holds no ZeroMQ context or event loop when it forks.

A side never outlives the runner: the kernel kills it when the runner exits, however that happens
(an interrupt that lands between a fork and the runner's note of the child, a ``kill -9``). Without
that, a side waiting for ``"go"`` would wait for ever, holding the runner's output pipes open.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

_ctx = multiprocessing.get_context("fork")


class SideError(RuntimeError):
    """A side process failed, timed out or sent something unexpected."""


class Side:
    """One running side process and its end of the pipe."""

    def __init__(self, name: str, target: Callable[..., Any], *args: Any) -> None:
        self.name = name
        self.conn, child = _ctx.Pipe()
        self.process = _ctx.Process(
            target=_entry, args=(target, child, self.conn, os.getpid(), args), name=name, daemon=True
        )
        self.process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def expect(self, kind: str, timeout: float) -> Any:
        """The payload of the next message, which must be ``kind``.

        Raises:
            SideError: the side reported an error, died, or said nothing within ``timeout``.
        """
        if not self.conn.poll(timeout):
            code = self.process.exitcode
            state = f"exited with {code}" if code is not None else f"said nothing for {timeout:g}s"
            raise SideError(f"{self.name} {state} (waiting for {kind!r})")
        try:
            what, payload = self.conn.recv()
        except EOFError:
            raise SideError(f"{self.name} exited with {self.process.exitcode} before {kind!r}") from None
        if what == "error":
            raise SideError(f"{self.name}: {payload}")
        if what != kind:
            raise SideError(f"{self.name} sent {what!r}, expected {kind!r}")
        return payload

    def send(self, message: Any) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):
            pass  # it already ended; its result (or error) says why

    def stop(self, timeout: float = 10.0) -> None:
        """Tell it to exit, wait, and kill it (by pid) if it does not."""
        stop_all([self], timeout)


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits (Linux; elsewhere nothing).

    ``parent``: the pid the parent had; if this process has been re-parented already (the parent
    exited before this call), it exits at once.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):  # not Linux: stop_all and Server.stop still stop every side
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _entry(target: Callable[..., Any], conn: Any, runner_end: Any, runner: int, args: tuple[Any, ...]) -> None:
    die_with_parent(signal.SIGKILL, runner)
    runner_end.close()  # the runner's end came with the fork; only the runner may hold it
    # The runner's objects came with the fork: keep the cyclic collector off them, or each full
    # collection in a side walks the runner's whole heap (the more Python a client runs per
    # operation, the more collections it triggers, so this would tax some systems more than others).
    gc.freeze()
    try:
        target(conn, *args)
    except BaseException as e:  # report every failure to the runner instead of dying silently
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        try:
            conn.send(("error", detail))
        except (BrokenPipeError, OSError):
            pass
    finally:
        conn.close()
        os._exit(0)  # skip inherited atexit handlers and finalizers of the runner


def wait_exit(conn: Any, timeout: float = 60.0) -> None:
    """In a side: wait for the runner's ``"exit"`` (so queued messages can drain before close)."""
    if conn.poll(timeout):
        try:
            conn.recv()
        except EOFError:
            pass


def stop_all(sides: list[Side], timeout: float = 10.0) -> None:
    """Tell every side to exit, wait for them together (at most ``timeout`` in all, not each), and
    kill (by pid) those still running: an interrupted case ends in seconds, however many sides."""
    for side in sides:
        side.send("exit")
    deadline = time.monotonic() + timeout
    for side in sides:
        side.process.join(max(0.0, deadline - time.monotonic()))
    for side in sides:
        if side.process.is_alive() and side.pid:
            os.kill(side.pid, signal.SIGKILL)
            side.process.join(5)
        side.conn.close()

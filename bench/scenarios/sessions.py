"""Sessions: ``get``, ``list`` and durable ``create`` per second, with 1 and 4 client processes.

pryxbus runs its session service (with a broker, as under ``pryxbus up``) in its own home; the peers
are the floors for each operation: a bare pyzmq REQ/REP echo and Redis GET for ``get``; for
``create``, bare SQLite single-row commits (WAL, ``synchronous=FULL``, a file in the same
directory, so on the same disk), the same commit behind a bare REQ/REP socket in another process
(the floor of any durable sidecar: one round trip plus one commit), and Redis SET (in memory, not
durable). Each client runs closed loop; the rate is all operations over the span from the first
client's start to the last client's end.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from bench.peers import WARM_COMMITS, commit_session, open_commit_db
from bench.results import Case, Metric, RunResult
from bench.scenarios.common import READY_TIMEOUT, Env
from bench.sides import Side, SideError, stop_all, wait_exit

OPS = Metric("ops", "operations", "ops/s")
SEEDED = WARM_COMMITS
"""Sessions created in pryxbus before measuring (``list`` gets full pages); the SQLite peer's file
gets as many commits, so that every store is measured in its steady state (``WARM_COMMITS``)."""

WARM_UP = (0.05, 0.2)
"""Seconds (quick run, full run) each client repeats its operation before it is measured, every
system alike; a quick run's counts are smaller, and it must stay under a minute. After 20
calls, the first 500 gets of a fresh client still took ~1.3-1.5x as long as the rest (3 pryxbus
clients of 3, 2 echo clients of 3): in a 6,000-get run, noise rather than the steady state compared."""

SYSTEMS = {
    "get": ("pryxbus", "zmq.reqrep", "redis"),
    "list": ("pryxbus",),
    "create": ("pryxbus", "sqlite", "sidecar", "redis"),
}


class _Ops:
    """One client's connection and the operation it repeats."""

    def __init__(self, system: str, op: str, wiring: dict[str, Any], seed: dict[str, Any]) -> None:
        self.close = lambda: None
        if system == "pryxbus":
            import sdk

            bus = sdk.connect(wiring["home"], name="bench", timeout=10.0)
            sessions = bus.sessions
            sid = seed["ids"][0]
            self.call = {
                "get": lambda: sessions.get(sid),
                "list": lambda: sessions.list(),
                "create": lambda: sessions.create("bench session"),
            }[op]
            self.close = bus.close
        elif system in ("zmq.reqrep", "sidecar"):
            import msgpack
            import zmq

            ctx = zmq.Context()
            req = ctx.socket(zmq.REQ)
            req.linger = 0
            req.connect(wiring["endpoint"])
            send, recv = req.send, req.recv
            if system == "zmq.reqrep":
                request = msgpack.packb({"op": "get", "id": seed["ids"][0]})
                self.call = lambda: (send(request), recv())
            else:
                pack, unpack = msgpack.packb, msgpack.unpackb
                self.call = lambda: (send(pack({"op": "create", "title": "bench session"})), unpack(recv()))
            self.close = lambda: (req.close(), ctx.term())
        elif system == "redis":
            import redis

            r = redis.Redis(host="127.0.0.1", port=wiring["port"])
            key = f"session:{seed['ids'][0]}"
            r.set(key, b"x" * 120)
            self.call = {
                "get": lambda: r.get(key),
                "create": lambda: r.set(f"session:{uuid.uuid4()}", b"x" * 120),
            }[op]
            self.close = r.close
        elif system == "sqlite":
            db = open_commit_db(seed["sqlite"])
            self.call = lambda: commit_session(db, "bench session")
            self.close = db.close
        else:
            raise ValueError(f"no session operations for {system}")


def client_side(
    conn: Any, system: str, op: str, wiring: dict[str, Any], seed: dict[str, Any], count: int, warm_up: float
) -> None:
    ops = _Ops(system, op, wiring, seed)
    try:
        warm_until = time.monotonic() + warm_up
        while time.monotonic() < warm_until:
            ops.call()
        conn.send(("ready", None))
        conn.recv()  # go
        call = ops.call
        t0 = time.monotonic_ns()
        for _ in range(count):
            call()
        t1 = time.monotonic_ns()
        conn.send(("result", {"t0": t0, "t1": t1, "ops": count}))
        wait_exit(conn)
    finally:
        ops.close()


def seed_side(conn: Any, home: str) -> None:
    import sdk

    with sdk.connect(home, name="bench-seed", timeout=10.0) as bus:
        ids = [bus.sessions.create(f"seeded {i}").id for i in range(SEEDED)]
    conn.send(("result", ids))


def prepare(env: Env) -> dict[str, Any]:
    """Seed the session store (once per bench run) and create the SQLite peer's table."""
    if "session_seed" in env.shared:
        return env.shared["session_seed"]
    seed: dict[str, Any] = {"ids": [str(uuid.uuid4())]}
    if "pryxbus.sessions" in env.wirings:
        side = Side("seed", seed_side, env.wirings["pryxbus.sessions"]["home"])
        try:
            seed["ids"] = side.expect("result", 120)
        finally:
            side.stop()
    home = Path(env.wirings.get("pryxbus.sessions", {}).get("home", env.workdir))
    seed["sqlite"] = str(home / "bench-sqlite-peer.db")
    db = open_commit_db(seed["sqlite"])
    for _ in range(SEEDED):
        commit_session(db, "seeded")
    # Held open for the whole run: SQLite deletes the WAL when its last connection closes, and each
    # measured run would then start on a new, growing WAL again.
    env.shared["sqlite_holder"] = db
    env.shared["session_seed"] = seed
    return seed


def _wiring(system: str, env: Env) -> dict[str, Any]:
    if system == "pryxbus":
        return env.wirings["pryxbus.sessions"]
    if system == "sqlite":
        return {"kind": "sqlite"}
    return env.wirings[system]


def _case(op: str, clients: int):
    def run(system: str, env: Env) -> RunResult:
        seed = prepare(env)
        count = {"get": env.scale(1000, 6000), "list": env.scale(150, 1000), "create": env.scale(200, 1500)}[op]
        count = max(50, count // clients)
        warm_up = WARM_UP[0] if env.quick else WARM_UP[1]
        sides: list[Side] = []
        try:
            for i in range(clients):
                sides.append(Side(f"{op}-client-{i}", client_side, system, op, _wiring(system, env), seed, count, warm_up))
            for s in sides:
                s.expect("ready", READY_TIMEOUT)
            for s in sides:
                s.send("go")
            results = [s.expect("result", 300) for s in sides]
        except SideError as e:
            return RunResult.failed(str(e))
        finally:
            stop_all(sides)
        span = (max(r["t1"] for r in results) - min(r["t0"] for r in results)) / 1e9
        total = sum(r["ops"] for r in results)
        return RunResult(values={"ops": total / max(span, 1e-9)}, details={"ops": total})

    return run


def cases(env: Env) -> list[Case]:
    out = []
    for op in ("get", "list", "create"):
        for clients in (1, 4):
            plural = "client" if clients == 1 else "clients"
            out.append(
                Case("sessions", f"{op}, {clients} {plural}", (OPS,), SYSTEMS[op], _case(op, clients),
                     full_only=op == "list" and clients > 1)
            )
    return out

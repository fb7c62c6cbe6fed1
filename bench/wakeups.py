"""Where a durable round trip's time goes on this machine: ``python -m bench.wakeups``.

The sessions scenario compares pryxbus's ``create`` with bare SQLite commits. This probe measures
the floor under any out-of-process store, with no pryxbus code at all, from one client in a closed
loop:

- a bare SQLite commit (WAL, ``synchronous=FULL``, the bench's single-row commit);
- a bare pyzmq REQ/REP echo (the round trip alone);
- the same commit behind a REP socket in another process (the bench's *sidecar* peer);

each round trip twice: with client and server where the scheduler puts them, and with both pinned
to one CPU. On a virtual machine whose idle CPUs halt, a round trip across CPUs pays for waking a
halted CPU at each hop; on one CPU every hop is a plain context switch. The gap between the two
columns is that cost, which no server code can remove.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.peers import WARM_COMMITS, run_echo, run_sidecar, commit_session, open_commit_db

_fork = multiprocessing.get_context("fork")


def _serve(cpu: int | None, kind: str, endpoint: str, db: str) -> None:
    sys.stdout = open(os.devnull, "w")  # the servers announce themselves; the probe prints a table
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # before the server's ZeroMQ context: its I/O thread inherits it
    if kind == "echo":
        run_echo(endpoint)
    else:
        run_sidecar(endpoint, db)


def _round_trips(kind: str, workdir: Path, count: int, cpu: int | None) -> float:
    """Microseconds per round trip to a fresh server of ``kind``, pinned (with this client) to ``cpu``."""
    import msgpack
    import zmq

    endpoint = f"ipc://{workdir}/{kind}.sock"
    server = _fork.Process(target=_serve, args=(cpu, kind, endpoint, str(workdir / f"{kind}.db")), daemon=True)
    server.start()
    everywhere = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    ctx = zmq.Context()  # created after the pin, like the server's
    try:
        req = ctx.socket(zmq.REQ)
        req.linger = 0
        req.rcvtimeo = 30_000  # the sidecar makes its warm-up commits before it binds
        req.connect(endpoint)
        request = msgpack.packb({"op": "create", "title": "bench session"})
        send, recv = req.send, req.recv
        for _ in range(20):
            send(request)
            recv()
        started = time.perf_counter()
        for _ in range(count):
            send(request)
            recv()
        return (time.perf_counter() - started) / count * 1e6
    finally:
        ctx.destroy(linger=0)
        os.sched_setaffinity(0, everywhere)
        server.terminate()
        server.join(5)


def _commits(workdir: Path, count: int) -> float:
    db = open_commit_db(str(workdir / "bare.db"))
    try:
        for _ in range(WARM_COMMITS):
            commit_session(db, "seeded")
        started = time.perf_counter()
        for _ in range(count):
            commit_session(db, "bench session")
        return (time.perf_counter() - started) / count * 1e6
    finally:
        db.close()


def measure(directory: Path, count: int, repeats: int, progress: Callable[[str], None] = print) -> dict[str, float]:
    """Median microseconds per operation for each probe, over ``repeats`` interleaved rounds."""
    one_cpu = max(os.sched_getaffinity(0))
    probes: dict[str, Callable[[Path], float]] = {
        "commit": lambda d: _commits(d, count),
        "echo": lambda d: _round_trips("echo", d, count, None),
        "echo, one CPU": lambda d: _round_trips("echo", d, count, one_cpu),
        "sidecar": lambda d: _round_trips("sidecar", d, count, None),
        "sidecar, one CPU": lambda d: _round_trips("sidecar", d, count, one_cpu),
    }
    times: dict[str, list[float]] = {name: [] for name in probes}
    for round_ in range(1, repeats + 1):
        for name, probe in probes.items():
            progress(f"round {round_}/{repeats}: {name}")
            workdir = Path(tempfile.mkdtemp(prefix=".wakeups-", dir=directory))
            try:
                times[name].append(probe(workdir))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    return {name: statistics.median(values) for name, values in times.items()}


def report(medians: dict[str, float], count: int, repeats: int) -> str:
    commit = medians["commit"]

    def cell(name: str, with_ratio: bool) -> str:
        us = medians[name]
        return f"{us:.0f} µs ({commit / us:.2f}× of a bare commit's rate)" if with_ratio else f"{us:.0f} µs"

    return "\n".join([
        f"one client, closed loop, {count} operations per run, median of {repeats} interleaved runs",
        "",
        "| operation | as the scheduler places them | client and server on one CPU |",
        "|---|---|---|",
        f"| bare SQLite commit (WAL, FULL) | {cell('commit', False)} | |",
        f"| REQ/REP echo | {cell('echo', False)} | {cell('echo, one CPU', False)} |",
        f"| REQ/REP + the same commit (sidecar) | {cell('sidecar', True)} | {cell('sidecar, one CPU', True)} |",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wakeups", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000, help="operations per run (default 1000)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved runs per figure (default 5)")
    p.add_argument("--dir", default=".", help="where the SQLite files go (default: here, the bench's disk)")
    args = p.parse_args(argv)
    if args.count < 1 or args.repeats < 1:
        p.error("--count and --repeats must be at least 1")
    directory = Path(args.dir)
    if not directory.is_dir():
        p.error(f"--dir: {directory} is not a directory")
    if len(os.sched_getaffinity(0)) < 2:
        print("note: this process may use one CPU only, so both columns measure the same placement")
    medians = measure(directory, args.count, args.repeats, progress=lambda line: print(f"{line:<50}", end="\r", flush=True))
    print(" " * 50, end="\r")
    print(report(medians, args.count, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

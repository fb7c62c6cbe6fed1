"""CPU time per event in each process of a 1 -> 1 run: publisher, broker, subscriber.

Load on a shared machine moves rates a lot and CPU time per event much less, so this measures the
latter: each process's CPU time (all its threads, libzmq's I/O thread included) over a
fixed count, read from /proc before ``go`` and after the last event arrived. Variants alternate
(A, B, A, B) within one invocation.

    python -m bench.cpu_per_event --size 1024 --size 16384 --rounds 3 [--zmq] [--batched]

``--zmq`` adds plain pyzmq PUB -> SUB (no broker) in the same rounds; ``--variant NAME=ENV=VALUE``
runs the pryxbus stack again with ``ENV`` set in every process of it; ``--profile PATH`` writes a
cProfile of each process; with ``CPU_PERF=PATH`` in the environment each process is also recorded
by ``perf record`` (PATH.broker, PATH.sub, PATH.pub). The io column is libzmq's threads.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def threads_of(pid: int) -> dict[str, float]:
    """CPU seconds run so far by the threads of ``pid`` (the scheduler's exact count): ``main``
    (Python, every thread that is not libzmq's) and ``io`` (libzmq's background threads)."""
    out = {"main": 0.0, "io": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text()
            ns = int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue
        out["io" if comm.startswith("ZMQbg") else "main"] += ns / 1e9
    out["flt"] = float(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    return out


def cpu_of(pid: int) -> float:
    t = threads_of(pid)
    return t["main"] + t["io"]


def _self_cpu() -> float:
    return time.process_time()


def _profiled(profile: str | None):
    if not profile:
        return None
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    return prof


def _dump(prof, profile: str | None, name: str) -> None:
    if prof is not None:
        prof.disable()
        prof.dump_stats(f"{profile}.{name}")


def _pryx_sub(home: str, n: int, batched: bool, conn, profile: str | None = None) -> None:
    import sdk

    bus = sdk.connect(home, name="cpu-sub", timeout=10.0)
    sub = bus.subscribe("cpu:data", hwm=1_000_000)
    conn.send("ready")
    got = 0
    first = sub.recv(timeout=30)  # the warm-up event
    assert first.payload == b"warm"
    c0 = _self_cpu()
    conn.send("live")
    prof = _profiled(profile)
    if batched:
        while got < n:
            got += len(sub.recv_many(4096, timeout=30))
    else:
        recv = sub.recv
        while got < n:
            recv(timeout=30)
            got += 1
    _dump(prof, profile, "sub")
    c1 = _self_cpu()
    conn.send((got, c1 - c0, sub.lost))
    bus.close()


def _pryx_pub(home: str, n: int, size: int, batched: bool, conn, profile: str | None = None) -> None:
    import sdk

    bus = sdk.connect(home, name="cpu-pub", timeout=10.0, hwm=1_000_000)
    conn.recv()
    bus.publish("cpu:data", b"warm")
    conn.recv()
    payload = b"x" * size
    c0 = _self_cpu()
    prof = _profiled(profile)
    if batched:
        event = ("cpu:data", payload)
        for start in range(0, n, 4096):
            bus.publish_many([event] * min(4096, n - start))
    else:
        publish = bus.publish
        for _ in range(n):
            publish("cpu:data", payload)
    _dump(prof, profile, "pub")
    c1 = _self_cpu()
    conn.send(c1 - c0)
    conn.recv()
    bus.close()


def _zmq_sub(addr: str, n: int, conn) -> None:
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.rcvhwm = 1_000_000
    s.connect(addr)
    s.subscribe(b"cpu:data")
    conn.send("ready")
    s.recv_multipart()
    c0 = _self_cpu()
    conn.send("live")
    recv = s.recv_multipart
    for _ in range(n):
        recv()
    c1 = _self_cpu()
    conn.send((n, c1 - c0, 0))
    s.close(0)
    ctx.term()


def _zmq_pub(addr: str, n: int, size: int, conn) -> None:
    import zmq

    ctx = zmq.Context()
    p = ctx.socket(zmq.PUB)
    p.sndhwm = 1_000_000
    p.bind(addr)
    conn.send("bound")
    conn.recv()
    while True:  # until the subscriber has its warm-up
        p.send_multipart([b"cpu:data", b"warm"])
        if conn.poll(0.01):
            break
    conn.recv()
    payload = b"x" * size
    send = p.send_multipart
    c0 = _self_cpu()
    for _ in range(n):
        send([b"cpu:data", payload])
    c1 = _self_cpu()
    conn.send(c1 - c0)
    conn.recv()
    p.close(10_000)
    ctx.term()


def run_pryxbus(home: Path, n: int, size: int, batched: bool, broker_pid: int, profile: str | None = None) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    sc, sc2 = ctx.Pipe()
    pc, pc2 = ctx.Pipe()
    sub = ctx.Process(target=_pryx_sub, args=(str(home), n, batched, sc2, profile))
    pub = ctx.Process(target=_pryx_pub, args=(str(home), n, size, batched, pc2, profile))
    sub.start()
    assert sc.recv() == "ready"
    pub.start()
    pc.send("go-warm")
    assert sc.recv() == "live"
    perfs = []
    if os.environ.get("CPU_PERF"):
        import signal
        for who, pid in (("broker", broker_pid), ("sub", sub.pid), ("pub", pub.pid)):
            perfs.append(subprocess.Popen(["perf", "record", "-q", "-o", f"{os.environ['CPU_PERF']}.{who}", "-p", str(pid)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)
    b0 = threads_of(broker_pid)
    s0, p0 = threads_of(sub.pid), threads_of(pub.pid)
    t0 = time.monotonic()
    pc.send("go")
    got, sub_cpu, lost = sc.recv()
    t1 = time.monotonic()
    b1 = threads_of(broker_pid)
    s1 = threads_of(sub.pid)
    for perf in perfs:
        perf.send_signal(signal.SIGINT)
        perf.wait(30)
    pub_cpu = pc.recv()
    p1 = threads_of(pub.pid)
    pc.send("bye")
    sub.join(30)
    pub.join(30)
    assert got >= n and not lost, (got, n, lost)
    us = 1e6 / n
    return {"pub": pub_cpu * us, "broker": (b1["main"] + b1["io"] - b0["main"] - b0["io"]) * us, "sub": sub_cpu * us,
            "rate": n / (t1 - t0), "pub_io": (p1["io"] - p0["io"]) * us, "broker_io": (b1["io"] - b0["io"]) * us,
            "sub_io": (s1["io"] - s0["io"]) * us, "pub_flt": (p1["flt"] - p0["flt"]) / n,
            "broker_flt": (b1["flt"] - b0["flt"]) / n, "sub_flt": (s1["flt"] - s0["flt"]) / n}


def run_zmq(n: int, size: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    addr = f"ipc://{tempfile.mkdtemp(prefix='cpz')}/d.sock"
    sc, sc2 = ctx.Pipe()
    pc, pc2 = ctx.Pipe()
    pub = ctx.Process(target=_zmq_pub, args=(addr, n, size, pc2))
    pub.start()
    assert pc.recv() == "bound"
    sub = ctx.Process(target=_zmq_sub, args=(addr, n, sc2))
    sub.start()
    assert sc.recv() == "ready"
    pc.send("warm")
    assert sc.recv() == "live"
    s0, p0 = threads_of(sub.pid), threads_of(pub.pid)
    t0 = time.monotonic()
    pc.send("go")
    got, sub_cpu, _ = sc.recv()
    t1 = time.monotonic()
    s1 = threads_of(sub.pid)
    pub_cpu = pc.recv()
    p1 = threads_of(pub.pid)
    pc.send("bye")
    sub.join(30)
    pub.join(30)
    us = 1e6 / n
    return {"pub": pub_cpu * us, "broker": 0.0, "sub": sub_cpu * us, "rate": n / (t1 - t0),
            "pub_io": (p1["io"] - p0["io"]) * us, "broker_io": 0.0, "sub_io": (s1["io"] - s0["io"]) * us,
            "pub_flt": (p1["flt"] - p0["flt"]) / n, "broker_flt": 0.0, "sub_flt": (s1["flt"] - s0["flt"]) / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, action="append")
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batched", action="store_true")
    ap.add_argument("--zmq", action="store_true", help="plain pyzmq PUB->SUB too, alternated")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=ENV=VALUE[,ENV=VALUE]: a broker variant (env for the broker process), alternated")
    ap.add_argument("--profile", help="cProfile every process, to PROFILE.{pub,broker,sub}")
    args = ap.parse_args()
    sizes = args.size or [1024, 16384]
    variants = [("main", {})]
    for v in args.variant:
        name, kvs = v.split("=", 1)
        variants.append((name, dict(kv.split("=", 1) for kv in kvs.split(","))))
    results: dict[tuple, list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for size in sizes:
            n = args.count or max(20_000, min(200_000, (256 << 20) // size // 8))
            for name, env in variants:
                home = Path(tempfile.mkdtemp(prefix="cpx"))
                prof = ["-m", "cProfile", "-o", f"{args.profile}.broker"] if args.profile else []
                proc = subprocess.Popen([sys.executable, *prof, "-m", "broker", "broker", "--home", str(home),
                                         "--sub-hwm", "1000000", "--sub-bytes", "0"],
                                        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
                saved = dict(os.environ)
                os.environ.update(env)
                try:
                    deadline = time.monotonic() + 30
                    while not (home / "sub.sock").exists() and time.monotonic() < deadline:
                        time.sleep(0.05)
                    time.sleep(0.3)
                    res = run_pryxbus(home, n, size, args.batched, proc.pid, args.profile)
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                    proc.terminate()
                    proc.wait(10)
                results.setdefault((size, name), []).append(res)
                print(size, name, {k: round(v, 2) for k, v in res.items()}, flush=True)
            if args.zmq:
                res = run_zmq(n, size)
                results.setdefault((size, "pyzmq"), []).append(res)
                print(size, "pyzmq", {k: round(v, 2) for k, v in res.items()}, flush=True)
    print("\nmedians, us of CPU per event (rate: events/s, loaded machine)")
    for (size, name), rs in sorted(results.items()):
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        total = med["pub"] + med["broker"] + med["sub"]
        print(f"{size:>6} {name:<10} pub {med['pub']:6.2f} ({med['pub_io']:5.2f} io)  broker {med['broker']:6.2f}"
              f" ({med['broker_io']:5.2f} io)  sub {med['sub']:6.2f} ({med['sub_io']:5.2f} io)"
              f"  total {total:6.2f}  rate {med['rate']:9.0f}  faults/event pub {med['pub_flt']:.2f}"
              f" broker {med['broker_flt']:.2f} sub {med['sub_flt']:.2f}")


if __name__ == "__main__":
    main()

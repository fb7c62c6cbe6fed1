"""``pryxbus cluster up`` (issue 19): a local 3-node JetStream cluster from the installed nats-server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest
from xprocess import ProcessStarter

from tests.backbone import server_or_skip
from tests.helpers import ENV

STREAM_SUBJECT = "t.cluster"


def test_cluster_up_starts_three_nodes_that_replicate_a_stream_on_disk(xprocess, tmp_path) -> None:
    server_or_skip()
    store = tmp_path / "nats"
    name = f"cluster-{os.getpid()}"

    class Starter(ProcessStarter):
        timeout = 60
        terminate_on_interrupt = True
        env = ENV
        args = [sys.executable, "-u", "-m", "broker", "cluster", "up", "--nodes", "3", "--dir", str(store)]
        pattern = "pryxbus cluster ready"

    pid, logfile = xprocess.ensure(name, Starter)
    try:
        ready = next(line for line in open(logfile) if "pryxbus cluster ready" in line)
        urls = re.search(r"servers=(\S+)", ready)[1].split(",")
        pids = [int(p) for p in re.search(r"pids=(\S+)", ready)[1].split(",")]
        assert len(urls) == 3 and len(set(urls)) == 3 and len(pids) == 3
        for i in (1, 2, 3):
            config = (store / f"n{i}" / "nats.conf").read_text()
            assert "sync_interval: always" in config
            assert str(store / f"n{i}" / "store") in config

        info = asyncio.run(_replicated(urls))
        assert info["last_seq"] == 5
        assert info["replicas"] == 3
        assert sorted(info["peers"]) == ["n1", "n2", "n3"]
        assert all(info["current"])
    finally:
        os.kill(pid, signal.SIGTERM)
        xprocess.getinfo(name).terminate()
    for node_pid in pids:  # every node stopped with it
        with pytest.raises(ProcessLookupError):
            _check_running(node_pid)


def _check_running(pid: int) -> None:
    """Raise ProcessLookupError if ``pid`` no longer runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ")[-1].startswith("Z"):
                raise ProcessLookupError(pid)
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


async def _replicated(urls: list[str]) -> dict:
    import nats

    nc = await nats.connect(urls[0], connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(name="T", subjects=[STREAM_SUBJECT], num_replicas=3)
        for i in range(5):
            await js.publish(STREAM_SUBJECT, b"%d" % i)
        # Every node reports the stream: ask through each one (the request goes to the leader).
        for url in urls[1:]:
            other = await nats.connect(url, connect_timeout=5)
            try:
                assert (await other.jetstream(timeout=10).stream_info("T")).state.last_seq == 5
            finally:
                await other.close()
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            info = await js.stream_info("T")
            replicas = info.cluster.replicas or []
            current = [bool(r.current) for r in replicas]
            if len(replicas) == 2 and all(current) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)  # sync-ok: polling the replicas' catch-up
        return {
            "last_seq": info.state.last_seq,
            "replicas": info.config.num_replicas,
            "peers": [info.cluster.leader, *(r.name for r in replicas)],
            "current": current,
        }
    finally:
        await nc.close()

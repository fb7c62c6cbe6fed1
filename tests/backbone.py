"""Fixtures of the backbone tests (a plugin of tests/conftest.py): one 3-node loopback NATS cluster
per test session (per xdist worker), fresh stream names and homes, and a clear skip when nats-py or
a fit nats-server is missing (``make test`` installs the ``cluster`` extra)."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def server_or_skip() -> str:
    """The nats-server to run, or skip the test saying what to install."""
    pytest.importorskip("nats", reason="nats-py is missing: pip install -e '.[cluster]'")
    from broker.backbone.cluster import ServerMissing, find_server

    try:
        return find_server()
    except ServerMissing as e:
        pytest.skip(str(e))


def local_cluster(nodes: int) -> Iterator[Any]:
    """A loopback NATS cluster of ``nodes`` (its store under /tmp, removed after), for a fixture to
    yield from; skips the test if nats-py or a fit nats-server is missing."""
    server = server_or_skip()
    from broker.backbone.cluster import Cluster

    directory = Path(tempfile.mkdtemp(prefix="pxb-nats-", dir="/tmp"))
    try:
        with Cluster(directory, nodes=nodes, server=server) as c:
            yield c
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """One 3-node cluster for every backbone test of this (xdist worker's) session: each test uses
    a fresh stream name; a test that kills a node starts it again."""
    yield from local_cluster(3)


_streams = itertools.count()


@pytest.fixture
def stream() -> str:
    """A fresh stream name per test: tests share the cluster."""
    return f"T{os.getpid()}x{next(_streams)}"


@pytest.fixture
def homes() -> Iterator[Callable[[], Path]]:
    """Factory of fresh, short homes (ipc paths stay short)."""
    made: list[Path] = []

    def make() -> Path:
        path = Path(tempfile.mkdtemp(prefix="pxb-", dir="/tmp"))
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)

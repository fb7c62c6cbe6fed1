"""Shared fixtures: real broker and session-service processes under pytest-xprocess.

Every part is started with ``python -m broker ...`` in a fresh short home directory (ipc socket
paths must stay under ~100 bytes) and is ready when it prints its ``ready`` line.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sdk
from schemas.endpoints import Endpoints
from tests.fronts import Front, front  # noqa: F401  (front: the fixture every SDK test runs on both fronts with)
from tests.helpers import Part, start_part

pytest_plugins = ["tests.backbone"]  # the backbone's fixtures: one NATS cluster per session, fresh streams


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long fault and load tests")


def _group(item: pytest.Item) -> str | None:
    """The pytest-xdist group a test runs in (one worker each, the Makefile's --dist loadgroup):
    every test on a NATS cluster shares one (tests/backbone.py starts one per worker), so one
    cluster runs instead of one per worker; the bench runner's tests look at every bench server on
    the machine, so no other bench may run beside them."""
    if "cluster" in getattr(item, "fixturenames", ()):
        return "backbone"
    module = item.module.__name__.rpartition(".")[2] if item.module is not None else ""
    if module in ("test_bench_runner", "test_bench_smoke"):
        return "bench"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = _group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh, short stack home."""
    path = Path(tempfile.mkdtemp(prefix="pxb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start(xprocess, home):
    """Factory: ``start("broker", "--sub-hwm", "10")`` starts a part in the test's home."""
    parts: list[Part] = []

    def _start(*args: str, pattern: str = "ready") -> Part:
        part = start_part(xprocess, home, *args, pattern=pattern)
        parts.append(part)
        return part

    yield _start
    for part in parts:
        try:
            part.stop()
        except Exception:
            pass


@pytest.fixture
def broker(start) -> Part:
    """A broker alone, on its defaults."""
    return start("broker")


@pytest.fixture
def endpoints(home: Path, broker: Part) -> Endpoints:
    return Endpoints.for_home(home)


@pytest.fixture
def bus(home: Path, broker: Part) -> Iterator[sdk.Bus]:
    with sdk.connect(home, name="test", timeout=5.0) as b:
        yield b


@pytest.fixture
def front_bus(home: Path, broker: Part, front: Front) -> Iterator[object]:
    """A connected Bus of the ``front`` under test, with the blocking face of ``sdk.Bus``."""
    with front.connect(home, name="test", timeout=5.0) as b:
        yield b


@pytest.fixture
def session_service(start) -> Part:
    """The session service alone (no broker: its session events are dropped)."""
    return start("session-service")


@pytest.fixture
def stack(start) -> tuple[Part, Part]:
    """A broker and a session service in the test's home: (broker, session_service)."""
    return start("broker"), start("session-service")


@pytest.fixture
def event_log(broker: Part, start) -> Part:
    """The event log (HOME/events.db), started after the broker it subscribes to."""
    return start("event-log")

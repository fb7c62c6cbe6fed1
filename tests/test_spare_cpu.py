"""The look for a spare CPU before the session service or the SDK's wait for a confirmation spins
(sdk/spare_cpu.py): on a
stat file the test writes (the real /proc/stat cannot be made busy or idle on demand), and once on
the real one. Times are passed in, ten seconds apart, as if that much had gone by."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sdk.spare_cpu import SPARE, WAIT_SPARE, SpareCpu

TICKS = os.sysconf("SC_CLK_TCK")
STEP = 10.0


class Machine:
    """A stat file whose busy ticks the test advances (spread over user, system and steal, as the
    kernel would count them; guest time is inside user and must not count twice)."""

    def __init__(self, path: Path) -> None:
        self.path, self.busy, self.idle = path, 1000, 1000
        self.write()

    def write(self) -> None:
        b = self.busy
        user, system, steal = b // 2, b // 4, b - b // 2 - b // 4
        self.path.write_text(
            f"cpu  {user} 0 {system} {self.idle // 2} {self.idle - self.idle // 2} 0 0 {steal} {user} 0\n"
            "cpu0 0 0 0 0 0 0 0 0 0 0\n"
        )

    def others_use(self, cpus: float, cpus_total: int) -> None:
        """For the next STEP seconds, the other processes use ``cpus`` CPUs; the rest is idle."""
        self.busy += round(cpus * STEP * TICKS)
        self.idle += round((cpus_total - cpus) * STEP * TICKS)
        self.write()


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "stat")


def test_spare_follows_what_the_other_processes_used(machine: Machine) -> None:
    meter = SpareCpu(window=1.0, stat_path=str(machine.path))
    cpus, t = meter.cpus, time.perf_counter()
    cases = [
        (0.0, cpus >= SPARE),  # an idle machine
        (float(cpus), False),  # every CPU busy all along
        (max(0.0, cpus - SPARE - 0.2), cpus >= SPARE + 0.2),  # a little more than SPARE left
        (cpus - SPARE + 0.2, False),  # a little less
    ]
    for i, (used, spare) in enumerate(cases, start=1):
        machine.others_use(used, cpus)
        assert meter.spare(t + i * STEP) is spare, (used, spare)


def test_the_sdk_waits_ask_for_one_cpu_where_the_service_asks_for_one_and_a_half(machine: Machine) -> None:
    service = SpareCpu(window=1.0, stat_path=str(machine.path))
    client = SpareCpu(window=1.0, stat_path=str(machine.path), need=WAIT_SPARE)
    cpus, t = service.cpus, time.perf_counter()
    if cpus < SPARE:
        pytest.skip(f"{cpus} CPU(s): neither ever spins, so there is no difference to see")
    machine.others_use(cpus - (WAIT_SPARE + SPARE) / 2, cpus)  # 1.25 CPUs left: enough for the client only
    assert client.spare(t + STEP) is True
    assert service.spare(t + STEP) is False


def test_the_answer_holds_until_the_window_ends(machine: Machine) -> None:
    meter = SpareCpu(window=STEP / 2, stat_path=str(machine.path))
    cpus, t = meter.cpus, time.perf_counter()
    machine.others_use(0.0, cpus)
    idle = meter.spare(t + STEP)
    machine.others_use(float(cpus), cpus)
    assert meter.spare(t + STEP + 1.0) is idle  # within the window: not looked at again
    assert meter.spare(t + 2 * STEP) is False  # the next window sees the busy machine


def test_without_a_stat_file_nothing_is_spare(tmp_path: Path) -> None:
    meter = SpareCpu(window=0.0, stat_path=str(tmp_path / "missing"))
    assert meter.spare(time.perf_counter() + STEP) is False
    meter.close()
    meter.close()  # idempotent


def test_an_unreadable_stat_line_leaves_nothing_spare(machine: Machine) -> None:
    meter = SpareCpu(window=0.0, stat_path=str(machine.path))
    machine.path.write_text("cpu  not numbers at all\n")
    assert meter.spare(time.perf_counter() + STEP) is False


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat on this system (not Linux)")
def test_the_real_proc_stat_is_read() -> None:
    meter = SpareCpu(window=0.0)
    try:
        busy, own = meter.sample()
        assert busy is not None and busy > 0
        assert own > 0  # this process has run
    finally:
        meter.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this system")
def test_a_child_forked_while_the_meter_is_locked_can_still_ask() -> None:
    """The SDK's meter is shared by a process's threads under a lock: a fork while another thread
    holds it must not leave the child a lock nobody will release."""
    import select

    from sdk import spare_cpu

    read_end, write_end = os.pipe()
    with spare_cpu._shared_lock:  # as another thread of this process asking at the moment of the fork
        pid = os.fork()
        if pid == 0:  # the child: ask, say so, leave
            try:
                spare_cpu.cpu_spare(time.perf_counter())
                os.write(write_end, b"y")
            finally:
                os._exit(0)
    ready: list[int] = []
    try:
        ready, _, _ = select.select([read_end], [], [], 10)
        assert ready, "the forked child did not get an answer from the meter within 10 s"
        assert os.read(read_end, 1) == b"y"
    finally:
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        os.close(write_end)

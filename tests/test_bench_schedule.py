"""The open-loop schedule: due times, catching up without re-timing, stamped payloads."""

from bench.schedule import Schedule, read_stamp, stamped_payload


class FakeClock:
    """A clock the test moves by hand; sleeping advances it (no real waiting)."""

    def __init__(self, now: int = 1_000_000_000) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += int(seconds * 1e9)


def test_due_times_are_evenly_spaced_from_the_start() -> None:
    s = Schedule(1000, 5, start_ns=0)
    assert [s.due(i) for i in range(5)] == [0, 1_000_000, 2_000_000, 3_000_000, 4_000_000]
    assert s.end_ns == 4_000_000


def test_overdue_counts_what_is_due_now() -> None:
    s = Schedule(1000, 10, start_ns=0)
    assert s.overdue(0, -1) == 0
    assert s.overdue(0, 0) == 1
    assert s.overdue(0, 2_500_000) == 3
    assert s.overdue(3, 2_500_000) == 0
    assert s.overdue(0, 10**12) == 10


def test_rate_zero_means_everything_is_due_at_once() -> None:
    s = Schedule(0, 4, start_ns=0)
    assert s.overdue(0, 0) == 4 and s.due(3) == 0


def test_batches_sleep_until_due_and_keep_due_times() -> None:
    clock = FakeClock()
    s = Schedule(100, 3, clock=clock)  # every 10 ms from now
    start = s.start_ns
    out = list(s.batches(sleep=clock.sleep))
    assert out == [(0, start), (1, start + 10_000_000), (2, start + 20_000_000)]
    assert clock.slept == [0.01, 0.01]


def test_a_late_sender_catches_up_without_re_timing() -> None:
    clock = FakeClock()
    s = Schedule(1000, 5, clock=clock)
    gen = s.batches(sleep=clock.sleep)
    assert next(gen) == (0, s.start_ns)
    clock.now += 3_500_000  # the sender stalled 3.5 ms: three more are overdue
    assert [next(gen) for _ in range(3)] == [(1, s.due(1)), (2, s.due(2)), (3, s.due(3))]
    assert clock.slept == []  # overdue messages go back to back


def test_stamped_payload_round_trip_and_size() -> None:
    p = stamped_payload(123_456_789, 42, 64)
    assert len(p) == 64 and read_stamp(p) == (123_456_789, 42)
    assert len(stamped_payload(1, 2, 4)) == 16  # never shorter than its header

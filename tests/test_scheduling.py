"""The RFC 9218 scheduler and field parser on their own (sans-I/O: no sockets needed)."""

from __future__ import annotations

import pytest

from multiplex.scheduling import Scheduler, format_priority, parse_priority


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"", (3, False)),
        (b"u=0", (0, False)),
        (b"u=7, i", (7, True)),
        (b"i", (3, True)),
        (b"i=?1", (3, True)),
        (b"u=1, i=?0", (1, False)),
        (b"u=8", (3, False)),  # out of range: ignored
        (b"u=-1", (3, False)),
        (b"u=a", (3, False)),
        (b"u=1.5", (3, False)),
        (b"i=1", (3, False)),  # not a boolean: ignored
        (b"u=2;foo=bar, i;x", (2, True)),  # parameters are ignored
        (b"x=1, u=4, y", (4, False)),  # unknown keys are ignored
        (b"u=1, u=5", (5, False)),  # the last member wins (RFC 8941 dictionaries)
        (b"\xff\xfe", (3, False)),
    ],
)
def test_parse_priority(value: bytes, expected: tuple[int, bool]) -> None:
    assert parse_priority(value) == expected


def test_parse_priority_keeps_the_base_for_missing_members() -> None:
    assert parse_priority(b"i", (1, False)) == (1, True)
    assert parse_priority(b"u=6", (1, True)) == (6, True)


def test_format_priority_round_trips() -> None:
    for priority in [(0, False), (7, True), (3, False)]:
        assert parse_priority(format_priority(priority)) == priority


def drain(scheduler: Scheduler, chunks: dict[int, int]) -> list[int]:
    """Run the scheduler as a connection would: one chunk per turn, until empty."""
    order = []
    while (stream_id := scheduler.next()) is not None:
        order.append(stream_id)
        chunks[stream_id] -= 1
        if chunks[stream_id]:
            scheduler.ready(stream_id)
    return order


def test_lower_urgency_first_then_stream_order() -> None:
    scheduler = Scheduler()
    for stream_id, urgency in [(1, 5), (3, 5), (5, 0), (7, 3)]:
        scheduler.set_priority(stream_id, (urgency, False))
        scheduler.ready(stream_id)
    order = drain(scheduler, {1: 2, 3: 2, 5: 2, 7: 2})
    assert order == [5, 5, 7, 7, 1, 1, 3, 3]


def test_incremental_round_robin_after_non_incremental() -> None:
    scheduler = Scheduler()
    for stream_id, incremental in [(1, True), (3, True), (5, False), (7, True)]:
        scheduler.set_priority(stream_id, (3, incremental))
        scheduler.ready(stream_id)
    order = drain(scheduler, {1: 3, 3: 3, 5: 2, 7: 3})
    assert order == [5, 5, 1, 3, 7, 1, 3, 7, 1, 3, 7]


def test_reprioritising_a_waiting_stream_moves_it() -> None:
    scheduler = Scheduler()
    for stream_id in (1, 3, 5):
        scheduler.set_priority(stream_id, (4, False))
        scheduler.ready(stream_id)
    scheduler.set_priority(5, (1, False))
    assert scheduler.next() == 5
    assert scheduler.next() == 1
    assert len(scheduler) == 1


def test_discarded_and_forgotten_streams_never_come_back() -> None:
    scheduler = Scheduler()
    for stream_id in (1, 3):
        scheduler.ready(stream_id)
    scheduler.discard(1)
    assert 1 not in scheduler
    assert scheduler.next() == 3
    assert scheduler.next() is None
    scheduler.set_priority(5, (0, True))
    scheduler.forget(5)
    assert scheduler.priority(5) == (3, False)


def test_stale_entries_of_a_stream_that_waits_again_are_skipped() -> None:
    scheduler = Scheduler()
    scheduler.ready(1)
    scheduler.discard(3)  # not waiting: nothing happens
    scheduler.set_priority(1, (6, False))  # a second heap entry for 1
    scheduler.ready(3)
    assert [scheduler.next(), scheduler.next(), scheduler.next()] == [3, 1, None]

"""The broker and SDK end to end: a first event through real processes."""

import sdk


def test_event_round_trip(bus: sdk.Bus) -> None:
    with bus.subscribe() as sub:
        bus.publish("channel:message", {"text": "hi"}, session_id="s-1")
        event = sub.recv(timeout=5)
    assert (event.type, event.payload, event.version, event.session_id, event.source) == (
        "channel:message",
        {"text": "hi"},
        1,
        "s-1",
        "test",
    )

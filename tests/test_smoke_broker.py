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


def test_connect_has_the_signature_of_the_contract() -> None:
    """DESIGN.md §3: ``sdk.connect(home=None, *, name="component")``, and ``sdk.aio.connect(...)``
    the same; the other options stay keyword-only."""
    import inspect

    import sdk.aio

    for connect in (sdk.connect, sdk.aio.connect):
        params = inspect.signature(connect).parameters
        assert params["home"].default is None
        assert params["name"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["name"].default == "component"


def test_connect_names_the_source_component_by_default(home, broker) -> None:
    with sdk.connect(home) as bus, bus.subscribe() as sub:
        bus.publish("trace:event")
        assert sub.recv(timeout=5).source == "component"

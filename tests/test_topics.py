"""Event type grammar and pattern matching (schemas/topics.py): pure functions, no sockets."""

from __future__ import annotations

import pytest

from schemas.topics import (
    EVERY_TYPE,
    MAX_TYPE_LENGTH,
    InvalidType,
    check_pattern,
    check_type,
    compile_matcher,
    is_valid_type,
    zmq_prefixes,
)

VALID_TYPES = ["channel:message", "agent:spawned", "a", "A-b_c.d:0", "session:created:v2", "x" * MAX_TYPE_LENGTH]
INVALID_TYPES = ["", ":", "a:", ":a", "a::b", "a b", "a/b", "agent:*", "**", "é", "\x00sync:x", "x" * (MAX_TYPE_LENGTH + 1)]


@pytest.mark.parametrize("event_type", VALID_TYPES)
def test_valid_types(event_type: str) -> None:
    assert check_type(event_type) == event_type
    assert is_valid_type(event_type.encode())


@pytest.mark.parametrize("event_type", INVALID_TYPES)
def test_invalid_types(event_type: str) -> None:
    with pytest.raises(InvalidType):
        check_type(event_type)
    assert not is_valid_type(event_type.encode())


@pytest.mark.parametrize("value", [None, 1, b"channel:message", ["a"]])
def test_non_str_types_and_patterns(value: object) -> None:
    with pytest.raises(InvalidType):
        check_type(value)
    with pytest.raises(InvalidType):
        check_pattern(value)


def test_non_utf8_topic_is_invalid() -> None:
    assert not is_valid_type(b"\xff\xfe")


@pytest.mark.parametrize("pattern", ["a", "agent:*", "*:spawned", "*", "session:**", "**", "a:*:**", "*:*"])
def test_valid_patterns(pattern: str) -> None:
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["", "**:a", "a:**:b", "a*", "a:b*", "***", "a::b", "a:", "a b"])
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(InvalidType):
        check_pattern(pattern)


def test_invalid_pattern_is_a_value_error() -> None:
    assert issubclass(InvalidType, ValueError)


TOPICS = ["agent", "agent:spawned", "agent:completed", "agent:x:y", "agents:spawned", "channel:message", "channel:message_x", "session:created", "session:a:b"]

CASES = {
    ("channel:message",): ["channel:message"],
    ("agent:*",): ["agent:spawned", "agent:completed"],
    ("*:spawned",): ["agent:spawned", "agents:spawned"],
    ("agent:**",): ["agent:spawned", "agent:completed", "agent:x:y"],
    ("session:**",): ["session:created", "session:a:b"],
    ("*",): ["agent"],
    ("**",): TOPICS,
    (): TOPICS,
    ("agent:*", "agent:spawned", "agent:**"): ["agent:spawned", "agent:completed", "agent:x:y"],
    ("channel:message", "session:*"): ["channel:message", "session:created"],
}


@pytest.mark.parametrize("patterns", list(CASES), ids=lambda p: "|".join(p) or "none")
def test_matcher_semantics(patterns: tuple[str, ...]) -> None:
    matches = compile_matcher(patterns)
    assert [t for t in TOPICS if matches(t.encode())] == CASES[patterns]


@pytest.mark.parametrize("patterns", [(), ("**",), ("agent:*",), ("a",)], ids=repr)
def test_control_topics_never_match(patterns: tuple[str, ...]) -> None:
    assert not compile_matcher(patterns)(b"\x00sync:abc")


def test_compile_matcher_rejects_invalid_patterns() -> None:
    with pytest.raises(InvalidType):
        compile_matcher(["agent:**:x"])


@pytest.mark.parametrize(
    ("patterns", "prefixes"),
    [
        ((), EVERY_TYPE),
        (("**",), EVERY_TYPE),
        (("agent:*", "channel:message"), [b"agent:", b"channel:message"]),
        (("agent:*", "agent:spawned", "agent:**"), [b"agent:"]),
        (("*:spawned", "agent:x"), EVERY_TYPE),
    ],
    ids=repr,
)
def test_zmq_prefixes_cover_patterns_minimally(patterns: tuple[str, ...], prefixes: list[bytes]) -> None:
    assert zmq_prefixes(patterns) == prefixes
    assert not any(b"\x00".startswith(p) for p in prefixes), "a control topic (NUL first) would match"
    for topic in TOPICS:  # every match passes some prefix filter
        if compile_matcher(patterns)(topic.encode()):
            assert any(topic.encode().startswith(p) for p in prefixes)

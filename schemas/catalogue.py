"""The event catalogue: the seed's event types and the payload fields each one carries.

The catalogue is open: a type that is not listed may still be published. Listed types can be
checked before publishing (``sdk.connect(..., validate=True)`` or :func:`validate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CATALOGUE_VERSION = 1
"""Version of the catalogue below; bumped when a listed type changes its fields."""

_JSON_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class EventSpec:
    """What one event type means and which payload fields it carries."""

    type: str
    doc: str
    required: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    optional: dict[str, type | tuple[type, ...]] = field(default_factory=dict)


_SESSION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "title": str,
    "created_at": str,
    "updated_at": str,
}

_PEER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "connection": int,
    "endpoint": str,
    "publishers": int,
    "subscribers": int,
}

CATALOGUE: dict[str, EventSpec] = {
    spec.type: spec
    for spec in [
        EventSpec(
            "channel:message",
            "A message arrived on a channel (a user typed in the TUI, a chat platform delivered one).",
            required={"text": str},
            optional={"channel": str, "sender": str, "message_id": str},
        ),
        EventSpec(
            "channel:outbound_message",
            "A message to send out on a channel.",
            required={"text": str},
            optional={"channel": str, "recipient": str, "reply_to": str},
        ),
        EventSpec(
            "agent:spawned",
            "An agent started working on a task.",
            required={"agent_id": str},
            optional={"task": str, "model": str},
        ),
        EventSpec(
            "agent:completed",
            "An agent finished; ``result`` holds its answer, ``ok`` whether it succeeded.",
            required={"agent_id": str},
            optional={"result": (str, dict, list, type(None)), "ok": bool, "duration_ms": (int, float)},
        ),
        EventSpec(
            "error:occurred",
            "An unrecoverable error in a component.",
            required={"message": str},
            optional={"component": str, "code": str, "details": (dict, str)},
        ),
        EventSpec(
            "trace:event",
            "A tracing span or point, for debugging.",
            required={"name": str},
            optional={"span_id": str, "parent_id": str, "attrs": dict, "duration_ms": (int, float)},
        ),
        EventSpec(
            "session:created",
            "The session service committed a new session (payload: the session).",
            required=_SESSION_FIELDS,
        ),
        EventSpec(
            "session:updated",
            "The session service committed a change to a session (payload: the session).",
            required=_SESSION_FIELDS,
        ),
        EventSpec(
            "session:deleted",
            "The session service deleted a session (payload: the session as it was).",
            required=_SESSION_FIELDS,
        ),
        EventSpec(
            "bus:started",
            "The broker started (only with ``--lifecycle-events``); usually before anyone subscribed.",
            required={"pid": int, "first_version": int},
        ),
        *(
            EventSpec(
                f"bus:{role}_{change}",
                f"The broker {'accepted' if change == 'connected' else 'lost'} a {role}'s connection"
                " (only with ``--lifecycle-events``); the counts are after the change.",
                required=_PEER_FIELDS,
            )
            for role in ("publisher", "subscriber")
            for change in ("connected", "disconnected")
        ),
    ]
}


class SchemaError(ValueError):
    """A payload that does not carry the fields its catalogued type requires."""


def validate(event_type: str, payload: Any) -> None:
    """Check ``payload`` against the catalogue entry for ``event_type``; unknown types pass.

    Raises:
        SchemaError: naming every missing or mistyped field.
    """
    spec = CATALOGUE.get(event_type)
    if spec is None:
        return
    if not isinstance(payload, dict):
        raise SchemaError(f"{event_type}: payload must be a dict, not {type(payload).__name__}")
    problems = []
    for name, kind in spec.required.items():
        if name not in payload:
            problems.append(f"missing field {name!r}")
        elif not isinstance(payload[name], kind):
            problems.append(f"field {name!r} must be {_kind_name(kind)}")
    for name, kind in spec.optional.items():
        if name in payload and not isinstance(payload[name], kind):
            problems.append(f"field {name!r} must be {_kind_name(kind)}")
    if problems:
        raise SchemaError(f"{event_type}: " + "; ".join(problems))


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def describe() -> list[dict[str, Any]]:
    """The catalogue as plain data (what ``schemas/catalogue.json`` holds)."""
    return [
        {
            "type": spec.type,
            "doc": spec.doc,
            "required": {k: _kind_name(v) for k, v in spec.required.items()},
            "optional": {k: _kind_name(v) for k, v in spec.optional.items()},
        }
        for spec in CATALOGUE.values()
    ]

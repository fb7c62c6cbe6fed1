"""pryxbus schemas: the event envelope, the event catalogue and the wire protocol (no sockets)."""

from schemas.catalogue import CATALOGUE, CATALOGUE_VERSION, EventSpec, SchemaError, validate
from schemas.envelope import (
    DEFAULT_MAX_EVENT_SIZE,
    ENVELOPE_VERSION,
    MAX_RUN,
    STAMP,
    WANT_VERSION,
    Envelope,
    MalformedEvent,
    decode_body,
    decode_deliver,
    encode_body,
    encode_publish,
    identify,
    publisher_of,
    run_stamp,
    split_run,
)
from schemas.topics import InvalidType, check_pattern, check_type, compile_matcher, zmq_prefixes

__all__ = [
    "CATALOGUE",
    "CATALOGUE_VERSION",
    "DEFAULT_MAX_EVENT_SIZE",
    "ENVELOPE_VERSION",
    "MAX_RUN",
    "STAMP",
    "WANT_VERSION",
    "Envelope",
    "EventSpec",
    "InvalidType",
    "MalformedEvent",
    "SchemaError",
    "check_pattern",
    "check_type",
    "compile_matcher",
    "decode_body",
    "decode_deliver",
    "encode_body",
    "encode_publish",
    "identify",
    "publisher_of",
    "run_stamp",
    "split_run",
    "validate",
    "zmq_prefixes",
]

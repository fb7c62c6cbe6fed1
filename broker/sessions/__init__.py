"""The session service: durable sessions in SQLite behind a ZeroMQ request/reply socket."""

from broker.sessions.service import ServiceConfig, SessionService
from broker.sessions.store import SCHEMA_VERSION, SessionStore

__all__ = ["SCHEMA_VERSION", "ServiceConfig", "SessionService", "SessionStore"]

"""pryxbus server side: the broker, the session service, the supervisor and the ``pryxbus`` CLI."""

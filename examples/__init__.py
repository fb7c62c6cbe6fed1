"""Small programs that use only the public SDK: the four roles of ``pryxbus demo`` (``tui``,
``runtime``, ``channel_manager``, ``agent``), each run as ``python -m examples.ROLE --home HOME
--session ID``, and the ``demo`` command that plays them."""

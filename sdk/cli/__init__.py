"""The client commands of ``pryxbus`` (pub, sub, stats, top, sessions, log): a stack from the shell,
through the SDK only."""

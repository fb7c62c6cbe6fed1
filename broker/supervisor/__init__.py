"""The supervisor: ``pryxbus up`` runs every part of a stack as a child process, restarts the ones that
die, and serves the stack's Prometheus metrics."""

"""The event log: a process that appends every stamped event to ``HOME/events.db`` and serves replays."""

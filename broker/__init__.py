"""pryxbus server side: one subpackage per process (``bus``, ``sessions``, ``eventlog``, ``supervisor``),
beside the modules they share (``security``, ``process``, ``logs``, ``envelope``) and the ``pryxbus``
command (``cli``)."""

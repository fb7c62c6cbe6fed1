"""The bus: the broker process that stamps every event (XSUB in, XPUB out, control), its tunables, its
version reservation and its ``pryxbus broker`` command."""

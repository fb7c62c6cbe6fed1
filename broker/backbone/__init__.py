"""The NATS JetStream backbone: a local cluster for trying it (``cluster``), the edge that takes the
stamping broker's place on each host (``edge``), and the stream's names and message layout (``stream``)."""

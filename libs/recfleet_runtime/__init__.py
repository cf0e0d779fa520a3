"""The shared runtime of every recfleet service: settings, logging, metrics, tracing,
gRPC server bootstrap, gRPC clients with deadlines, retries and circuit breakers."""

"""The gRPC services the gateway calls: one typed client per service (`clients`), a stable
and a canary track of each (`tracks`), all of them built from settings (`fleet`)."""

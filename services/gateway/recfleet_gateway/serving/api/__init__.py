"""The `/v1` routes and the health probes: map JSON to calls on the request path and back,
nothing else."""

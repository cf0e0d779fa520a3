"""REST routers: map JSON to calls on the gateway's services and back, nothing else."""

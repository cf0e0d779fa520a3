"""What every REST route shares, on the request path and in the control plane alike:
authentication and rate limits, problem+json errors, the JSON response class, the shared
schema pieces, and the outermost middleware."""

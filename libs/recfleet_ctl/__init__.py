"""Operations tooling: `recfleetctl` (talks to the gateway's admin API) and the local
fleet runner behind `make run`."""

"""Edges of candidate-gen: the artifact store that holds shards and the Postgres registry."""

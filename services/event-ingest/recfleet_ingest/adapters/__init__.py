"""Adapters at the edge of event-ingest: Kafka producer and consumer, Postgres, Redis."""

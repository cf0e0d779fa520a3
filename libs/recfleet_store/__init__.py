"""Storage adapters shared by services and batch jobs: Postgres schema and migrations,
the artifact store, Redis key layout, Kafka topics and a local Kafka-protocol broker."""

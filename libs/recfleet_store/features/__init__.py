"""The feature store's definitions and batch paths, shared by the feature-store service
and the jobs: the feature registry (`registry`, `feature_views.yaml`), point-in-time reads
of the offline history (`pointintime`, pure), event-derived histories (`aggregates`,
pure), set-based Postgres and pipelined Redis access (`batch`), and materialization with
the training-set export (`materialization`)."""

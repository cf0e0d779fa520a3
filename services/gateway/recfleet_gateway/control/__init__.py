"""The control plane: canary traffic (`traffic`), batch jobs (`jobs`), and the `/admin/v1`
routes (`api/`) for models, jobs, API keys, traffic, experiments, the index and the cache."""

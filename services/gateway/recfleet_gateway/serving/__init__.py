"""The request path: the `/v1` routes (`api/`), the recommendation orchestration
(`recommender`) and its hops (`user_context`, `retrieval`, `ranking_call`, `fallbacks`,
`shadow`), the result cache and cursors, experiment assignment, and user erasure."""

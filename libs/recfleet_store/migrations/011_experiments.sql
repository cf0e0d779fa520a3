-- Online experiments (issue 7): named variants with traffic shares, and the exposures
-- the gateway logs, one row per response served under an experiment.
CREATE TABLE experiments (
    name       text PRIMARY KEY,
    salt       text NOT NULL,
    -- [{"name": "control", "share": 0.5, "ranker_version": "rules" | "serving" | "<version>"}, ...];
    -- the first variant is the control.
    variants   jsonb NOT NULL,
    -- Only requests for this surface take part; NULL means every surface.
    surface    text,
    status     text NOT NULL CHECK (status IN ('running', 'stopped')),
    created_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz
);

CREATE TABLE exposures (
    request_id text NOT NULL,
    experiment text NOT NULL,
    variant    text NOT NULL,
    user_id    text NOT NULL,
    item_ids   text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX exposures_experiment ON exposures (experiment, variant);
CREATE INDEX exposures_request_id ON exposures (request_id);
-- User erasure deletes a user's exposures.
CREATE INDEX exposures_user_id ON exposures (user_id);

-- Attribution: clients send the request id that showed an item back in the event's
-- context; the readout finds events by it. Partial, so events without one cost nothing.
CREATE INDEX events_context_request_id ON events ((context->>'request_id')) WHERE context ? 'request_id';

-- Catalog: the source of truth for item metadata.
CREATE TABLE items (
    item_id      text PRIMARY KEY,
    title        text NOT NULL DEFAULT '',
    categories   text[] NOT NULL DEFAULT '{}',
    creator      text NOT NULL DEFAULT '',
    published_at timestamptz,
    tags         text[] NOT NULL DEFAULT '{}',
    age_rating   smallint NOT NULL DEFAULT 0 CHECK (age_rating IN (0, 7, 13, 16, 18)),
    regions      text[] NOT NULL DEFAULT '{}',
    available    boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX items_primary_category ON items ((categories[1]));
CREATE INDEX items_updated_at ON items (updated_at);

CREATE TABLE user_profiles (
    user_id              text PRIMARY KEY,
    preferred_categories text[] NOT NULL DEFAULT '{}',
    blocked_categories   text[] NOT NULL DEFAULT '{}',
    liked_items          text[] NOT NULL DEFAULT '{}',
    age                  smallint,
    country              text,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Interaction events, range-partitioned by event time. Idempotency is by event id, kept
-- in its own table because a unique key on a partitioned table must include the
-- partition key.
CREATE TABLE events (
    event_id    uuid NOT NULL,
    user_id     text NOT NULL,
    item_id     text NOT NULL,
    type        text NOT NULL,
    value       double precision,
    ts          timestamptz NOT NULL,
    context     jsonb NOT NULL DEFAULT '{}',
    received_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (ts);
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX events_user_ts ON events (user_id, ts DESC);
CREATE INDEX events_item_ts ON events (item_id, ts DESC);

CREATE TABLE event_ids (
    event_id uuid PRIMARY KEY,
    user_id  text NOT NULL
);
CREATE INDEX event_ids_user ON event_ids (user_id);

-- Offline features: every value with the time it became true, for point-in-time reads.
CREATE TABLE offline_features (
    entity     text NOT NULL CHECK (entity IN ('user', 'item')),
    entity_id  text NOT NULL,
    feature    text NOT NULL,
    value      jsonb NOT NULL,
    event_time timestamptz NOT NULL,
    PRIMARY KEY (entity, entity_id, feature, event_time)
);

CREATE TABLE item_popularity (
    window_name text NOT NULL,
    item_id     text NOT NULL,
    score       double precision NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (window_name, item_id)
);

-- Model registry: ALS versions (factors + FAISS shards + user vectors move together)
-- and ranker versions.
CREATE TABLE model_versions (
    version      text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('als', 'ranker')),
    status       text NOT NULL CHECK (status IN ('candidate', 'serving', 'retired')),
    artifact_uri text NOT NULL,
    metrics      jsonb NOT NULL DEFAULT '{}',
    params       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    promoted_at  timestamptz
);
CREATE UNIQUE INDEX model_versions_one_serving ON model_versions (kind) WHERE status = 'serving';

CREATE TABLE user_vectors (
    user_id       text NOT NULL,
    model_version text NOT NULL,
    vector        real[] NOT NULL,
    PRIMARY KEY (user_id, model_version)
);

CREATE TABLE api_keys (
    key_id     text PRIMARY KEY,
    name       text NOT NULL,
    key_hash   text NOT NULL UNIQUE,
    scopes     text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE erasures (
    receipt_id   text PRIMARY KEY,
    user_id      text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    stores       jsonb NOT NULL DEFAULT '{}'
);
-- Users whose erasure was requested: later events for them are dropped.
CREATE TABLE erased_users (
    user_id      text PRIMARY KEY,
    receipt_id   text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    job_id      text PRIMARY KEY,
    name        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    params      jsonb NOT NULL DEFAULT '{}',
    output      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

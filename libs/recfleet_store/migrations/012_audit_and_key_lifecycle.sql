-- The audit log: one row per admin action that succeeded, newest by audit_id. `before`
-- and `after` hold the state the action changed (never a secret).
CREATE TABLE audit_log (
    audit_id   bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    key_id     text NOT NULL,
    key_name   text NOT NULL DEFAULT '',
    request_id text,
    action     text NOT NULL,
    target     text NOT NULL DEFAULT '',
    before     jsonb,
    after      jsonb
);
CREATE INDEX audit_log_action ON audit_log (action, audit_id DESC);
CREATE INDEX audit_log_key_id ON audit_log (key_id, audit_id DESC);
CREATE INDEX audit_log_created_at ON audit_log (created_at);

-- Keys that expire, and rotation: the old key names its successor and expires after the
-- overlap.
ALTER TABLE api_keys
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN rotated_to text REFERENCES api_keys (key_id);

-- The bootstrap admin key (from the environment) is refused while this one row exists.
CREATE TABLE bootstrap_key_disabled (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    disabled_at timestamptz NOT NULL DEFAULT now(),
    disabled_by text NOT NULL
);

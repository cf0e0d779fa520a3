-- Materialization (offline -> online) remembers how far it got, per pipeline name, so the
-- next run only reads what arrived or changed after that.
CREATE TABLE IF NOT EXISTS materialization_watermarks (
    name       text PRIMARY KEY,
    watermark  timestamptz NOT NULL,
    stats      jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Incremental windows select changed rows by these columns.
CREATE INDEX IF NOT EXISTS user_profiles_updated_at ON user_profiles (updated_at);

-- Canary traffic changes and automatic rollbacks, newest last: the audit trail that
-- `recfleetctl traffic status` shows.
CREATE TABLE canary_events (
    id         bigserial PRIMARY KEY,
    service    text NOT NULL,
    action     text NOT NULL CHECK (action IN ('set', 'rollback', 'auto-rollback', 'ack')),
    weight     smallint,
    shadow     smallint,
    reason     text NOT NULL DEFAULT '',
    actor      text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX canary_events_service ON canary_events (service, created_at DESC);

-- The erasure suppression list keeps a keyed hash of the user id, not the id itself
-- (recfleet_store.suppression): user_hash = HMAC-SHA256(RECFLEET_ERASURE_HASH_KEY, user id),
-- hex. SQL has no key, so rows already here keep their plain id until
-- `recfleet-jobs rehash-suppression` hashes them and clears it; until then the readers
-- match either column. user_id stays unique so that a pod of the previous release can
-- still insert during a rolling upgrade.
ALTER TABLE erased_users DROP CONSTRAINT erased_users_pkey;
ALTER TABLE erased_users ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE erased_users ADD CONSTRAINT erased_users_user_id_key UNIQUE (user_id);
ALTER TABLE erased_users ADD COLUMN user_hash text;
ALTER TABLE erased_users ADD CONSTRAINT erased_users_user_hash_key UNIQUE (user_hash);
ALTER TABLE erased_users ADD CONSTRAINT erased_users_hash_or_plain
    CHECK (user_hash IS NOT NULL OR user_id IS NOT NULL);
ALTER TABLE erased_users ADD CONSTRAINT erased_users_user_hash_hex
    CHECK (user_hash ~ '^[0-9a-f]{64}$');

-- API keys. Portable SQL: the same file runs on SQLite and Postgres.
-- Only the SHA-256 of a key's secret is kept; times are Unix seconds,
-- 0 meaning "never" (expires_at) or "not yet" (last_used).
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    groups_json  TEXT NOT NULL,
    label        TEXT NOT NULL,
    scopes_json  TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    last_used    BIGINT NOT NULL,
    creator_ua   TEXT NOT NULL,
    generated_by TEXT NOT NULL
);

CREATE INDEX api_keys_owner ON api_keys (owner);

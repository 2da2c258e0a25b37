-- +goose Up
-- The key registry: every HSM key the broker signs with, its purpose, the
-- account it belongs to ('' for the broker's own), and its life. Changes
-- are audited (key_activated, key_retired, key_destroyed entries).
CREATE TABLE keys (
    kid           TEXT PRIMARY KEY,
    purpose       TEXT NOT NULL CHECK (purpose IN ('token', 'audit', 'checkpoint')),
    account       TEXT NOT NULL DEFAULT '',
    label         TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    public_pem    TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    activated_at  INTEGER NOT NULL,
    retired_at    INTEGER,
    destroyed_at  INTEGER
);
CREATE UNIQUE INDEX keys_one_active ON keys (purpose, account) WHERE state = 'active';
CREATE INDEX tokens_kid ON tokens (kid, expires_at);

-- +goose Down

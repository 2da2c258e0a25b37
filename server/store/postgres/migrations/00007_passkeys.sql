-- +goose Up
-- Approvers' WebAuthn credentials (passkeys and security keys): pending
-- from their creation in the console until their owner confirms them with
-- a binding statement signed by their client-certificate key, then bound;
-- removed ones stay so that their IDs are never bound again.
CREATE TABLE passkeys (
    credential_id BYTEA PRIMARY KEY,
    principal     TEXT NOT NULL,
    public_key    BYTEA NOT NULL,
    rp_id         TEXT NOT NULL,
    web_origin    TEXT NOT NULL,
    label         TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL CHECK (state IN ('pending', 'bound', 'removed')),
    code_hash     TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    bound_at      BIGINT,
    bound_entry   BIGINT,
    removed_at    BIGINT,
    counter       BIGINT NOT NULL DEFAULT 0,
    flags         INTEGER NOT NULL DEFAULT 0,
    statement     BYTEA NOT NULL DEFAULT '\x',
    signature     BYTEA NOT NULL DEFAULT '\x',
    cert          BYTEA NOT NULL DEFAULT '\x',
    CHECK (state <> 'pending' OR (code_hash IS NOT NULL AND expires_at IS NOT NULL))
);
CREATE UNIQUE INDEX passkeys_pending_code ON passkeys (code_hash) WHERE state = 'pending';
CREATE INDEX passkeys_pending_expiry ON passkeys (expires_at) WHERE state = 'pending';
CREATE INDEX passkeys_by_principal ON passkeys (principal, created_at, credential_id);

-- A review signed by a passkey keeps its WebAuthn assertion (JSON of
-- format/passkey.Assertion); key_store is where the reviewer's client said
-- its certificate key lives.
ALTER TABLE reviews ADD COLUMN passkey BYTEA NOT NULL DEFAULT '\x';
ALTER TABLE reviews ADD COLUMN key_store TEXT NOT NULL DEFAULT '';

-- +goose Down

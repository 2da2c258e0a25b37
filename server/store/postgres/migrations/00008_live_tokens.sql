-- +goose Up
-- The SQLite store's migration 00012: outstanding tokens from a partial
-- index of the tokens whose grant was not revoked.
ALTER TABLE tokens ADD COLUMN revoked BIGINT NOT NULL DEFAULT 0;
UPDATE tokens SET revoked = 1 WHERE request_id IN (SELECT id FROM requests WHERE state = 'REVOKED');
DROP INDEX tokens_expiry;
CREATE INDEX tokens_live ON tokens (expires_at, jti) WHERE revoked = 0;

-- +goose Down

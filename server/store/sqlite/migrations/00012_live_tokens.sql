-- +goose Up
-- Tokens of a revoked grant are dead whatever their exp: the report's
-- outstanding tokens are read from a partial index of the live ones, so
-- revoked grants cost nothing there while their tokens would still be
-- unexpired. SaveRequest marks a grant's tokens when it revokes it.
ALTER TABLE tokens ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;
UPDATE tokens SET revoked = 1 WHERE request_id IN (SELECT id FROM requests WHERE state = 'REVOKED');
DROP INDEX tokens_expiry;
CREATE INDEX tokens_live ON tokens (expires_at, jti) WHERE revoked = 0;

-- +goose Down

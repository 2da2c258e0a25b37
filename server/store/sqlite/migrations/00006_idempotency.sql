-- +goose Up
-- Writes made with an idempotency key, so that a retry after a lost reply
-- (on this replica or another) gets the first answer instead of a second
-- write. Kept for a day.
CREATE TABLE idempotency (
    principal    TEXT NOT NULL,
    method       TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    entry_index  INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    PRIMARY KEY (principal, method, key)
);
CREATE INDEX idempotency_at ON idempotency (at);

-- +goose Down
DROP TABLE idempotency;

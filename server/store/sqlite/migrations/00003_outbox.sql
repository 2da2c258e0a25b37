-- +goose Up
-- The durable outbox: one row per event and sink, written in the same
-- transaction as the change it announces. Rows are delivered at least once
-- and kept (delivered or dead) as the record of what was announced.
CREATE TABLE outbox (
    event_id         TEXT NOT NULL,
    sink             TEXT NOT NULL,
    type             TEXT NOT NULL,
    account          TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    body             BLOB NOT NULL,
    ack              INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    last_error       TEXT NOT NULL DEFAULT '',
    delivered_at     INTEGER,
    lease_until      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, sink)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_request ON outbox (request_id, type);

-- +goose Down

-- +goose Up
-- Witness cosignatures (C2SP tlog-cosignature) of the signed checkpoints:
-- the signature line each witness answered add-checkpoint with, verified
-- before it is stored. A witness that cosigns the same size again (to say
-- it is still the largest tree it saw) replaces its older line.
CREATE TABLE cosignatures (
    size        INTEGER NOT NULL,
    witness     TEXT NOT NULL,
    line        TEXT NOT NULL,
    signed_at   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (size, witness)
);
CREATE INDEX cosignatures_witness ON cosignatures (witness, size);

-- The index of the request_approved entry of a grant, so its first token
-- can wait for a witnessed checkpoint that covers it (require_witnessed).
ALTER TABLE requests ADD COLUMN approved_entry INTEGER;

-- +goose Down
ALTER TABLE requests DROP COLUMN approved_entry;
DROP TABLE cosignatures;

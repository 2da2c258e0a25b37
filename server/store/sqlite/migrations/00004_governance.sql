-- +goose Up
-- Time-locked solo requests and alert acknowledgements.
ALTER TABLE requests ADD COLUMN solo INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN solo_acked_at INTEGER;
ALTER TABLE requests ADD COLUMN grant_acked_at INTEGER;
ALTER TABLE requests ADD COLUMN token_kid TEXT NOT NULL DEFAULT '';

-- Post-use reviews: one per grant that issued a token.
CREATE TABLE post_reviews (
    id             TEXT PRIMARY KEY,
    request_id     TEXT NOT NULL UNIQUE REFERENCES requests (id),
    account        TEXT NOT NULL,
    requester      TEXT NOT NULL,
    excluded_json  TEXT NOT NULL,
    opened_at      INTEGER NOT NULL,
    due_at         INTEGER NOT NULL,
    closed_at      INTEGER,
    closed_by      TEXT NOT NULL DEFAULT '',
    notes          TEXT NOT NULL DEFAULT '',
    statement      BLOB NOT NULL DEFAULT x'',
    signature      BLOB NOT NULL DEFAULT x'',
    cert           BLOB NOT NULL DEFAULT x''
);
CREATE INDEX post_reviews_open ON post_reviews (due_at) WHERE closed_at IS NULL;

-- Attestations that an account is still needed and its approvers right.
CREATE TABLE attestations (
    id           TEXT PRIMARY KEY,
    account      TEXT NOT NULL,
    attested_by  TEXT NOT NULL,
    at           INTEGER NOT NULL,
    notes        TEXT NOT NULL,
    policy_hash  TEXT NOT NULL,
    statement    BLOB NOT NULL,
    signature    BLOB NOT NULL,
    cert         BLOB NOT NULL,
    entry_index  INTEGER NOT NULL
);
CREATE INDEX attestations_account ON attestations (account, at);

-- When each account first appeared in a logged policy, the start of its
-- drill and attestation clocks.
CREATE TABLE accounts_seen (
    account     TEXT PRIMARY KEY,
    first_seen  INTEGER NOT NULL
);

-- Overdue alerts already sent, so each is sent once per period.
CREATE TABLE alerts_sent (
    key  TEXT PRIMARY KEY,
    at   INTEGER NOT NULL
);

-- Client certificates seen, to warn before an approver's lapses.
CREATE TABLE certs_seen (
    principal  TEXT NOT NULL,
    serial     TEXT NOT NULL,
    not_after  INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (principal, serial)
);

-- +goose Down

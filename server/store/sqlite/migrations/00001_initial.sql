-- +goose Up
-- Times are Unix nanoseconds, UTC. Booleans are 0/1.
CREATE TABLE requests (
    id                    TEXT PRIMARY KEY,
    account               TEXT NOT NULL,
    requester             TEXT NOT NULL,
    justification         TEXT NOT NULL,
    ticket                TEXT NOT NULL,
    ttl_ns                INTEGER NOT NULL,
    drill                 INTEGER NOT NULL,
    state                 TEXT NOT NULL,
    created_at            INTEGER NOT NULL,
    approval_deadline     INTEGER NOT NULL,
    rule_json             TEXT NOT NULL,
    deny_threshold        INTEGER NOT NULL,
    max_issuances         INTEGER NOT NULL,
    activation_window_ns  INTEGER NOT NULL,
    policy_hash           TEXT NOT NULL,
    approved_at           INTEGER,
    grant_expires_at      INTEGER,
    activation_deadline   INTEGER,
    approvers_json        TEXT NOT NULL DEFAULT '[]',
    issued                INTEGER NOT NULL DEFAULT 0,
    first_issued_at       INTEGER,
    final_at              INTEGER,
    final_reason          TEXT NOT NULL DEFAULT '',
    final_by              TEXT NOT NULL DEFAULT '',
    created_entry         INTEGER NOT NULL,
    created_leaf          BLOB NOT NULL,
    version               INTEGER NOT NULL DEFAULT 1,
    CHECK (state IN ('PENDING','APPROVED','DENIED','CANCELLED','EXPIRED','REVOKED')),
    CHECK (issued >= 0 AND issued <= max_issuances)
);
CREATE INDEX requests_newest ON requests (created_at DESC, id DESC);
CREATE INDEX requests_open ON requests (state) WHERE state IN ('PENDING', 'APPROVED');

CREATE TABLE reviews (
    request_id   TEXT NOT NULL REFERENCES requests (id),
    reviewer     TEXT NOT NULL,
    decision     TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    comment      TEXT NOT NULL,
    at           INTEGER NOT NULL,
    entry_index  INTEGER NOT NULL,
    leaf_hash    BLOB NOT NULL,
    PRIMARY KEY (request_id, reviewer)
);

CREATE TABLE tokens (
    jti           TEXT PRIMARY KEY,
    request_id    TEXT NOT NULL REFERENCES requests (id),
    account       TEXT NOT NULL,
    subject       TEXT NOT NULL,
    audience      TEXT NOT NULL,
    kid           TEXT NOT NULL,
    issued_at     INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    token_sha256  TEXT NOT NULL,
    drill         INTEGER NOT NULL,
    entry_index   INTEGER NOT NULL
);
CREATE INDEX tokens_request ON tokens (request_id);

-- The audit log. Entries are never updated or deleted; a signature may be
-- added once to an entry written while the HSM was down.
CREATE TABLE entries (
    idx        INTEGER PRIMARY KEY,
    time       INTEGER NOT NULL,
    type       TEXT NOT NULL,
    body       BLOB NOT NULL,
    leaf_hash  BLOB NOT NULL,
    signature  BLOB,
    key_id     TEXT
);
CREATE INDEX entries_unsigned ON entries (idx) WHERE signature IS NULL;
CREATE INDEX entries_type ON entries (type, idx);

-- +goose StatementBegin
CREATE TRIGGER entries_dense BEFORE INSERT ON entries
WHEN NEW.idx IS NOT COALESCE((SELECT MAX(idx) FROM entries) + 1, 0)
BEGIN
    SELECT RAISE(ABORT, 'audit entries are appended in sequence');
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
BEGIN
    SELECT RAISE(ABORT, 'audit entries are append-only');
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER entries_no_rewrite BEFORE UPDATE OF idx, time, type, body, leaf_hash ON entries
BEGIN
    SELECT RAISE(ABORT, 'audit entries are append-only');
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER entries_sign_once BEFORE UPDATE OF signature, key_id ON entries
WHEN OLD.signature IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'audit entry is already signed');
END;
-- +goose StatementEnd

-- +goose Down
-- The audit log is never rolled back: there is no down migration.

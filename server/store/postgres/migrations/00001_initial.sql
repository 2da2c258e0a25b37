-- +goose Up
-- The schema of the SQLite store (its migrations 00001-00005), for
-- PostgreSQL. Times are Unix nanoseconds, UTC; booleans are 0/1, so that
-- both engines share one set of queries (server/store/sqlstore).
CREATE TABLE requests (
    id                    TEXT PRIMARY KEY,
    account               TEXT NOT NULL,
    requester             TEXT NOT NULL,
    justification         TEXT NOT NULL,
    ticket                TEXT NOT NULL,
    ttl_ns                BIGINT NOT NULL,
    drill                 BIGINT NOT NULL,
    state                 TEXT NOT NULL,
    created_at            BIGINT NOT NULL,
    approval_deadline     BIGINT NOT NULL,
    rule_json             TEXT NOT NULL,
    deny_threshold        BIGINT NOT NULL,
    max_issuances         BIGINT NOT NULL,
    activation_window_ns  BIGINT NOT NULL,
    policy_hash           TEXT NOT NULL,
    approved_at           BIGINT,
    grant_expires_at      BIGINT,
    activation_deadline   BIGINT,
    approvers_json        TEXT NOT NULL DEFAULT '[]',
    issued                BIGINT NOT NULL DEFAULT 0,
    first_issued_at       BIGINT,
    final_at              BIGINT,
    final_reason          TEXT NOT NULL DEFAULT '',
    final_by              TEXT NOT NULL DEFAULT '',
    created_entry         BIGINT NOT NULL,
    created_leaf          BYTEA NOT NULL,
    version               BIGINT NOT NULL DEFAULT 1,
    solo                  BIGINT NOT NULL DEFAULT 0,
    solo_acked_at         BIGINT,
    grant_acked_at        BIGINT,
    token_kid             TEXT NOT NULL DEFAULT '',
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
    at           BIGINT NOT NULL,
    entry_index  BIGINT NOT NULL,
    leaf_hash    BYTEA NOT NULL,
    statement    BYTEA NOT NULL DEFAULT '\x',
    signature    BYTEA NOT NULL DEFAULT '\x',
    cert         BYTEA NOT NULL DEFAULT '\x',
    PRIMARY KEY (request_id, reviewer)
);

CREATE TABLE tokens (
    jti           TEXT PRIMARY KEY,
    request_id    TEXT NOT NULL REFERENCES requests (id),
    account       TEXT NOT NULL,
    subject       TEXT NOT NULL,
    audience      TEXT NOT NULL,
    kid           TEXT NOT NULL,
    issued_at     BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    token_sha256  TEXT NOT NULL,
    drill         BIGINT NOT NULL,
    entry_index   BIGINT NOT NULL
);
CREATE INDEX tokens_request ON tokens (request_id);
CREATE INDEX tokens_kid ON tokens (kid, expires_at);

-- The audit log. Entries are never updated or deleted; a signature may be
-- added once to an entry written while the HSM was down.
CREATE TABLE entries (
    idx        BIGINT PRIMARY KEY,
    time       BIGINT NOT NULL,
    type       TEXT NOT NULL,
    body       BYTEA NOT NULL,
    leaf_hash  BYTEA NOT NULL,
    signature  BYTEA,
    key_id     TEXT
);
CREATE INDEX entries_unsigned ON entries (idx) WHERE signature IS NULL;
CREATE INDEX entries_type ON entries (type, idx);

-- +goose StatementBegin
CREATE FUNCTION entries_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.idx IS DISTINCT FROM (SELECT COALESCE(MAX(idx) + 1, 0) FROM entries) THEN
            RAISE EXCEPTION 'audit entries are appended in sequence';
        END IF;
        RETURN NEW;
    ELSIF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit entries are append-only';
    END IF;
    IF NEW.idx IS DISTINCT FROM OLD.idx OR NEW.time IS DISTINCT FROM OLD.time OR NEW.type IS DISTINCT FROM OLD.type
       OR NEW.body IS DISTINCT FROM OLD.body OR NEW.leaf_hash IS DISTINCT FROM OLD.leaf_hash THEN
        RAISE EXCEPTION 'audit entries are append-only';
    END IF;
    IF OLD.signature IS NOT NULL AND (NEW.signature IS DISTINCT FROM OLD.signature OR NEW.key_id IS DISTINCT FROM OLD.key_id) THEN
        RAISE EXCEPTION 'audit entry is already signed';
    END IF;
    RETURN NEW;
END $$;
-- +goose StatementEnd
CREATE TRIGGER entries_guard BEFORE INSERT OR UPDATE OR DELETE ON entries FOR EACH ROW EXECUTE FUNCTION entries_guard();
-- +goose StatementBegin
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are append-only', TG_ARGV[0];
END $$;
-- +goose StatementEnd
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('audit entries');

-- The RFC 6962 Merkle tree over the entries, stored as in
-- golang.org/x/mod/sumdb/tlog.
CREATE TABLE tree_hashes (
    idx   BIGINT PRIMARY KEY,
    hash  BYTEA NOT NULL
);
CREATE TRIGGER tree_hashes_append_only BEFORE UPDATE OR DELETE ON tree_hashes FOR EACH ROW EXECUTE FUNCTION refuse_change('tree hashes');
CREATE TRIGGER tree_hashes_no_truncate BEFORE TRUNCATE ON tree_hashes FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('tree hashes');

-- Signed checkpoints (C2SP tlog-checkpoint notes).
CREATE TABLE checkpoints (
    size        BIGINT PRIMARY KEY,
    root        BYTEA NOT NULL,
    note        BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE ON checkpoints FOR EACH ROW EXECUTE FUNCTION refuse_change('checkpoints');

-- The durable outbox.
CREATE TABLE outbox (
    event_id         TEXT NOT NULL,
    sink             TEXT NOT NULL,
    type             TEXT NOT NULL,
    account          TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    body             BYTEA NOT NULL,
    ack              BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    last_error       TEXT NOT NULL DEFAULT '',
    delivered_at     BIGINT,
    lease_until      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, sink)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_request ON outbox (request_id, type);

CREATE TABLE post_reviews (
    id             TEXT PRIMARY KEY,
    request_id     TEXT NOT NULL UNIQUE REFERENCES requests (id),
    account        TEXT NOT NULL,
    requester      TEXT NOT NULL,
    excluded_json  TEXT NOT NULL,
    opened_at      BIGINT NOT NULL,
    due_at         BIGINT NOT NULL,
    closed_at      BIGINT,
    closed_by      TEXT NOT NULL DEFAULT '',
    notes          TEXT NOT NULL DEFAULT '',
    statement      BYTEA NOT NULL DEFAULT '\x',
    signature      BYTEA NOT NULL DEFAULT '\x',
    cert           BYTEA NOT NULL DEFAULT '\x'
);
CREATE INDEX post_reviews_open ON post_reviews (due_at) WHERE closed_at IS NULL;

CREATE TABLE attestations (
    id           TEXT PRIMARY KEY,
    account      TEXT NOT NULL,
    attested_by  TEXT NOT NULL,
    at           BIGINT NOT NULL,
    notes        TEXT NOT NULL,
    policy_hash  TEXT NOT NULL,
    statement    BYTEA NOT NULL,
    signature    BYTEA NOT NULL,
    cert         BYTEA NOT NULL,
    entry_index  BIGINT NOT NULL
);
CREATE INDEX attestations_account ON attestations (account, at);

CREATE TABLE accounts_seen (
    account     TEXT PRIMARY KEY,
    first_seen  BIGINT NOT NULL
);

CREATE TABLE alerts_sent (
    key  TEXT PRIMARY KEY,
    at   BIGINT NOT NULL
);

CREATE TABLE certs_seen (
    principal  TEXT NOT NULL,
    serial     TEXT NOT NULL,
    not_after  BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    PRIMARY KEY (principal, serial)
);

CREATE TABLE keys (
    kid           TEXT PRIMARY KEY,
    purpose       TEXT NOT NULL CHECK (purpose IN ('token', 'audit', 'checkpoint')),
    account       TEXT NOT NULL DEFAULT '',
    label         TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    public_pem    TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    activated_at  BIGINT NOT NULL,
    retired_at    BIGINT,
    destroyed_at  BIGINT
);
CREATE UNIQUE INDEX keys_one_active ON keys (purpose, account) WHERE state = 'active';

-- +goose Down
-- The audit log is never rolled back: there is no down migration.

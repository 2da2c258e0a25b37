-- +goose Up
-- OpenSSH and X.509 certificates issued for grants: what the KRL and the
-- CRL are made of. A certificate is revoked (revoked_at) in the transaction
-- that revokes its grant; revocation_state counts those changes, so the KRL
-- is a function of the database alone and the same on every replica.
CREATE TABLE certificates (
    kind         TEXT NOT NULL CHECK (kind IN ('ssh', 'x509')),
    ca_kid       TEXT NOT NULL,
    serial       TEXT NOT NULL,
    request_id   TEXT NOT NULL REFERENCES requests (id),
    account      TEXT NOT NULL,
    subject      TEXT NOT NULL,
    issued_at    INTEGER NOT NULL,
    not_before   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    fingerprint  TEXT NOT NULL,
    entry_index  INTEGER NOT NULL,
    revoked_at   INTEGER,
    PRIMARY KEY (kind, ca_kid, serial)
);
CREATE INDEX certificates_request ON certificates (request_id);
CREATE INDEX certificates_ca_expiry ON certificates (ca_kid, expires_at);
CREATE INDEX certificates_revoked ON certificates (kind, expires_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE revocation_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  INTEGER NOT NULL,
    at          INTEGER NOT NULL
);

-- The latest CRL of each X.509 CA key, signed in the HSM.
CREATE TABLE crls (
    ca_kid       TEXT PRIMARY KEY,
    number       INTEGER NOT NULL,
    this_update  INTEGER NOT NULL,
    next_update  INTEGER NOT NULL,
    der          BLOB NOT NULL
);

-- The key registry learns the CA purposes, and when a CA key was retired
-- with every certificate it signed revoked.
CREATE TABLE keys_new (
    kid           TEXT PRIMARY KEY,
    purpose       TEXT NOT NULL CHECK (purpose IN ('token', 'audit', 'checkpoint', 'ssh-ca', 'x509-ca')),
    account       TEXT NOT NULL DEFAULT '',
    label         TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    public_pem    TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    activated_at  INTEGER NOT NULL,
    retired_at    INTEGER,
    destroyed_at  INTEGER,
    revoked_at    INTEGER
);
INSERT INTO keys_new (kid, purpose, account, label, key_id, public_pem, state, activated_at, retired_at, destroyed_at)
    SELECT kid, purpose, account, label, key_id, public_pem, state, activated_at, retired_at, destroyed_at FROM keys;
DROP TABLE keys;
ALTER TABLE keys_new RENAME TO keys;
CREATE UNIQUE INDEX keys_one_active ON keys (purpose, account) WHERE state = 'active';

-- +goose Down

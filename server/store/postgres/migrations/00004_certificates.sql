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
    issued_at    BIGINT NOT NULL,
    not_before   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    fingerprint  TEXT NOT NULL,
    entry_index  BIGINT NOT NULL,
    revoked_at   BIGINT,
    PRIMARY KEY (kind, ca_kid, serial)
);
CREATE INDEX certificates_request ON certificates (request_id);
CREATE INDEX certificates_ca_expiry ON certificates (ca_kid, expires_at);
CREATE INDEX certificates_revoked ON certificates (kind, expires_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE revocation_state (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    generation  BIGINT NOT NULL,
    at          BIGINT NOT NULL
);

-- The latest CRL of each X.509 CA key, signed in the HSM.
CREATE TABLE crls (
    ca_kid       TEXT PRIMARY KEY,
    number       BIGINT NOT NULL,
    this_update  BIGINT NOT NULL,
    next_update  BIGINT NOT NULL,
    der          BYTEA NOT NULL
);

-- The key registry learns the CA purposes, and when a CA key was retired
-- with every certificate it signed revoked.
ALTER TABLE keys DROP CONSTRAINT keys_purpose_check;
ALTER TABLE keys ADD CONSTRAINT keys_purpose_check CHECK (purpose IN ('token', 'audit', 'checkpoint', 'ssh-ca', 'x509-ca'));
ALTER TABLE keys ADD COLUMN revoked_at BIGINT;

-- +goose Down

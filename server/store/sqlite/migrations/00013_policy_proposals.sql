-- +goose Up
-- Proposed changes of the policy, waiting for the policy admins' quorum:
-- pending ones are found through partial indexes (open work), whatever the
-- history; closed ones stay as the record of what was proposed.
CREATE TABLE policy_proposals (
    id           TEXT PRIMARY KEY,
    proposer     TEXT NOT NULL,
    proposer_key TEXT NOT NULL DEFAULT '',
    comment      TEXT NOT NULL DEFAULT '',
    source       TEXT NOT NULL DEFAULT '',
    previous     TEXT NOT NULL,
    hash         TEXT NOT NULL,
    policy       BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'applied', 'denied', 'expired', 'stale')),
    closed_at    INTEGER,
    entry        INTEGER NOT NULL,
    closed_entry INTEGER,
    reason       TEXT NOT NULL DEFAULT '',
    CHECK (state = 'pending' OR closed_at IS NOT NULL)
);
CREATE INDEX policy_proposals_pending ON policy_proposals (created_at, id) WHERE state = 'pending';
CREATE INDEX policy_proposals_pending_expiry ON policy_proposals (expires_at) WHERE state = 'pending';

CREATE TABLE policy_proposal_reviews (
    proposal  TEXT NOT NULL REFERENCES policy_proposals (id),
    reviewer  TEXT NOT NULL,
    signer_key TEXT NOT NULL,
    decision  TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    comment   TEXT NOT NULL DEFAULT '',
    statement BLOB NOT NULL,
    signature BLOB NOT NULL,
    cert      BLOB NOT NULL,
    at        INTEGER NOT NULL,
    entry     INTEGER NOT NULL,
    PRIMARY KEY (proposal, reviewer)
);
CREATE UNIQUE INDEX policy_proposal_reviews_key ON policy_proposal_reviews (proposal, signer_key);
CREATE INDEX policy_proposal_reviews_order ON policy_proposal_reviews (proposal, at, entry);

-- +goose Down

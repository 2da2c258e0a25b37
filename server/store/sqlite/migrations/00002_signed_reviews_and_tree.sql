-- +goose Up
-- Signed review statements: the statement, its signature and the reviewer's
-- certificate (DER), so a token's quorum can be re-verified from the store.
ALTER TABLE reviews ADD COLUMN statement BLOB NOT NULL DEFAULT x'';
ALTER TABLE reviews ADD COLUMN signature BLOB NOT NULL DEFAULT x'';
ALTER TABLE reviews ADD COLUMN cert BLOB NOT NULL DEFAULT x'';

-- The RFC 6962 Merkle tree over the entries, stored as in
-- golang.org/x/mod/sumdb/tlog: every complete subtree hash at its storage
-- index, so roots and proofs need O(log n) reads.
CREATE TABLE tree_hashes (
    idx   INTEGER PRIMARY KEY,
    hash  BLOB NOT NULL
);

-- Signed checkpoints (C2SP tlog-checkpoint notes).
CREATE TABLE checkpoints (
    size        INTEGER PRIMARY KEY,
    root        BLOB NOT NULL,
    note        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

-- +goose StatementBegin
CREATE TRIGGER tree_hashes_no_rewrite BEFORE UPDATE ON tree_hashes
BEGIN
    SELECT RAISE(ABORT, 'tree hashes are append-only');
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER tree_hashes_no_delete BEFORE DELETE ON tree_hashes
BEGIN
    SELECT RAISE(ABORT, 'tree hashes are append-only');
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER checkpoints_no_rewrite BEFORE UPDATE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints are append-only');
END;
-- +goose StatementEnd

-- +goose Down

-- +goose Up
-- Requests signed by their requesters: the request statement, its
-- signature and the requester's certificate (DER) whose key made it, so
-- that reviews by that key never count and an identity change can be
-- judged against who signed. Requests stored before have none.
ALTER TABLE requests ADD COLUMN request_statement BLOB NOT NULL DEFAULT x'';
ALTER TABLE requests ADD COLUMN request_signature BLOB NOT NULL DEFAULT x'';
ALTER TABLE requests ADD COLUMN requester_cert BLOB NOT NULL DEFAULT x'';

-- +goose Down

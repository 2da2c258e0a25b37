-- +goose Up
-- The version of the request content text its content digest was computed
-- in (docs/signing.md). Every request stored before this migration was
-- created under version 1.
ALTER TABLE requests ADD COLUMN content_version INTEGER NOT NULL DEFAULT 1;

-- +goose Down

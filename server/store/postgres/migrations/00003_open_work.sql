-- +goose Up
-- The SQLite store's migration 00007: partial indexes over open work, list
-- indexes in page order, counters kept in the write transaction, outbox
-- retention.

DROP INDEX requests_open;
CREATE INDEX requests_pending_due ON requests (approval_deadline) WHERE state = 'PENDING';
CREATE INDEX requests_grant_due ON requests (grant_expires_at) WHERE state = 'APPROVED';
CREATE INDEX requests_activation_due ON requests (activation_deadline) WHERE state = 'APPROVED' AND issued = 0;
CREATE INDEX requests_solo_waiting ON requests (created_at) WHERE state = 'PENDING' AND solo = 1 AND solo_acked_at IS NOT NULL;
CREATE INDEX requests_by_state ON requests (state, created_at DESC, id DESC);
CREATE INDEX requests_by_account ON requests (account, state, created_at DESC, id DESC);
CREATE INDEX requests_by_account_any ON requests (account, created_at DESC, id DESC);
CREATE INDEX requests_by_requester ON requests (requester, state, created_at DESC, id DESC);
CREATE INDEX requests_by_requester_any ON requests (requester, created_at DESC, id DESC);
CREATE INDEX requests_last_use ON requests (account, drill, first_issued_at) WHERE issued > 0;

CREATE INDEX tokens_expiry ON tokens (expires_at);
CREATE INDEX certs_seen_last ON certs_seen (last_seen);

ALTER TABLE outbox ADD COLUMN acked_at BIGINT;
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE state = 'delivered';
CREATE INDEX outbox_dead ON outbox (created_at DESC) WHERE state = 'dead';
CREATE INDEX outbox_dead_acked ON outbox (acked_at) WHERE state = 'dead' AND acked_at IS NOT NULL;
CREATE INDEX outbox_pending_sink ON outbox (sink, created_at) WHERE state = 'pending';

CREATE TABLE request_counts (state TEXT PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO request_counts (state, n) SELECT state, COUNT(*) FROM requests GROUP BY state;
-- +goose StatementBegin
CREATE FUNCTION request_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        IF TG_OP = 'UPDATE' AND OLD.state = NEW.state THEN
            RETURN NULL;
        END IF;
        UPDATE request_counts SET n = n - 1 WHERE state = OLD.state;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO request_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = request_counts.n + 1;
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER request_counts_track AFTER INSERT OR UPDATE OF state OR DELETE ON requests
    FOR EACH ROW EXECUTE FUNCTION request_counts_track();

CREATE TABLE token_count (one BIGINT PRIMARY KEY CHECK (one = 1), n BIGINT NOT NULL);
INSERT INTO token_count (one, n) SELECT 1, COUNT(*) FROM tokens;
-- +goose StatementBegin
CREATE FUNCTION token_count_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE token_count SET n = n + 1;
    ELSE
        UPDATE token_count SET n = n - 1;
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER token_count_track AFTER INSERT OR DELETE ON tokens FOR EACH ROW EXECUTE FUNCTION token_count_track();

CREATE TABLE outbox_counts (sink TEXT NOT NULL, state TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (sink, state));
INSERT INTO outbox_counts (sink, state, n) SELECT sink, state, COUNT(*) FROM outbox GROUP BY sink, state;
-- +goose StatementBegin
CREATE FUNCTION outbox_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        IF TG_OP = 'UPDATE' AND OLD.state = NEW.state THEN
            RETURN NULL;
        END IF;
        UPDATE outbox_counts SET n = n - 1 WHERE sink = OLD.sink AND state = OLD.state;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO outbox_counts (sink, state, n) VALUES (NEW.sink, NEW.state, 1)
            ON CONFLICT (sink, state) DO UPDATE SET n = outbox_counts.n + 1;
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER outbox_counts_track AFTER INSERT OR UPDATE OF state OR DELETE ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_counts_track();

-- +goose Down

-- +goose Up
-- The SQLite store's migration 00009: partial indexes over open work, list
-- indexes in page order, counters kept in the write transaction, outbox
-- retention.

DROP INDEX requests_open;
CREATE INDEX requests_pending_due ON requests (state, approval_deadline);
CREATE INDEX requests_grant_due ON requests (state, grant_expires_at, id);
CREATE INDEX requests_activation_due ON requests (state, issued, activation_deadline);
CREATE INDEX requests_solo_waiting ON requests (created_at) WHERE state = 'PENDING' AND solo = 1 AND solo_acked_at IS NOT NULL;
CREATE INDEX requests_by_state ON requests (state, created_at DESC, id DESC);
CREATE INDEX requests_by_account ON requests (account, state, created_at DESC, id DESC);
CREATE INDEX requests_by_account_any ON requests (account, created_at DESC, id DESC);
CREATE INDEX requests_by_requester ON requests (requester, state, created_at DESC, id DESC);
CREATE INDEX requests_by_requester_any ON requests (requester, created_at DESC, id DESC);
CREATE INDEX requests_by_requester_account ON requests (requester, account, created_at DESC, id DESC);
CREATE INDEX requests_last_use ON requests (account, drill, first_issued_at) WHERE issued > 0;

CREATE INDEX tokens_expiry ON tokens (expires_at, jti);
CREATE INDEX certs_seen_last ON certs_seen (last_seen);

ALTER TABLE outbox ADD COLUMN acked_at BIGINT;
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE state = 'delivered';
CREATE INDEX outbox_dead ON outbox (created_at DESC) WHERE state = 'dead';
CREATE INDEX outbox_dead_acked ON outbox (acked_at) WHERE state = 'dead' AND acked_at IS NOT NULL;
CREATE INDEX outbox_pending_sink ON outbox (sink, created_at) WHERE state = 'pending';

-- Counters, kept in the transaction that changes the rows by statement
-- triggers over transition tables: one write per statement and counter,
-- and none when a statement changes no state (a row-level trigger would
-- pile up versions of one counter row in a large transaction).
CREATE TABLE request_counts (state TEXT PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO request_counts (state, n) SELECT state, COUNT(*) FROM requests GROUP BY state;
-- +goose StatementBegin
CREATE FUNCTION request_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO request_counts (state, n) SELECT state, COUNT(*) FROM new_rows GROUP BY state
            ON CONFLICT (state) DO UPDATE SET n = request_counts.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO request_counts (state, n)
            SELECT state, SUM(d) FROM (SELECT state, 1 AS d FROM new_rows UNION ALL SELECT state, -1 AS d FROM old_rows) x
            GROUP BY state HAVING SUM(d) <> 0
            ON CONFLICT (state) DO UPDATE SET n = request_counts.n + excluded.n;
    ELSE
        INSERT INTO request_counts (state, n) SELECT state, -COUNT(*) FROM old_rows GROUP BY state
            ON CONFLICT (state) DO UPDATE SET n = request_counts.n + excluded.n;
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER request_counts_insert AFTER INSERT ON requests REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_counts_track();
CREATE TRIGGER request_counts_update AFTER UPDATE ON requests REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_counts_track();
CREATE TRIGGER request_counts_delete AFTER DELETE ON requests REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_counts_track();

CREATE TABLE token_count (one BIGINT PRIMARY KEY CHECK (one = 1), n BIGINT NOT NULL);
INSERT INTO token_count (one, n) SELECT 1, COUNT(*) FROM tokens;
-- +goose StatementBegin
CREATE FUNCTION token_count_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE token_count SET n = n + (SELECT COUNT(*) FROM new_rows);
    ELSE
        UPDATE token_count SET n = n - (SELECT COUNT(*) FROM old_rows);
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER token_count_insert AFTER INSERT ON tokens REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION token_count_track();
CREATE TRIGGER token_count_delete AFTER DELETE ON tokens REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION token_count_track();

CREATE TABLE outbox_counts (sink TEXT NOT NULL, state TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (sink, state));
INSERT INTO outbox_counts (sink, state, n) SELECT sink, state, COUNT(*) FROM outbox GROUP BY sink, state;
-- +goose StatementBegin
CREATE FUNCTION outbox_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO outbox_counts (sink, state, n) SELECT sink, state, COUNT(*) FROM new_rows GROUP BY sink, state
            ON CONFLICT (sink, state) DO UPDATE SET n = outbox_counts.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO outbox_counts (sink, state, n)
            SELECT sink, state, SUM(d) FROM (SELECT sink, state, 1 AS d FROM new_rows UNION ALL SELECT sink, state, -1 AS d FROM old_rows) x
            GROUP BY sink, state HAVING SUM(d) <> 0
            ON CONFLICT (sink, state) DO UPDATE SET n = outbox_counts.n + excluded.n;
    ELSE
        INSERT INTO outbox_counts (sink, state, n) SELECT sink, state, -COUNT(*) FROM old_rows GROUP BY sink, state
            ON CONFLICT (sink, state) DO UPDATE SET n = outbox_counts.n + excluded.n;
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER outbox_counts_insert AFTER INSERT ON outbox REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_counts_track();
CREATE TRIGGER outbox_counts_update AFTER UPDATE ON outbox REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_counts_track();
CREATE TRIGGER outbox_counts_delete AFTER DELETE ON outbox REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_counts_track();

-- +goose Down

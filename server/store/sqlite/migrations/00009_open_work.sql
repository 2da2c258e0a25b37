-- +goose Up
-- Everything that runs per tick, per scrape or per call reads open work
-- only: partial indexes over open requests, list indexes that serve each
-- filter in page order, and counters kept in the write transaction.

DROP INDEX requests_open;
-- The expiry sweep, one index per deadline behind the state, so that a
-- search reads the open requests due and nothing of the closed history.
CREATE INDEX requests_pending_due ON requests (state, approval_deadline);
CREATE INDEX requests_grant_due ON requests (state, grant_expires_at, id);
CREATE INDEX requests_activation_due ON requests (state, issued, activation_deadline);
-- Solo requests whose veto window is running.
CREATE INDEX requests_solo_waiting ON requests (created_at) WHERE state = 'PENDING' AND solo = 1 AND solo_acked_at IS NOT NULL;
-- ListRequests: each filter, and each pair of them, in page order.
CREATE INDEX requests_by_state ON requests (state, created_at DESC, id DESC);
CREATE INDEX requests_by_account ON requests (account, state, created_at DESC, id DESC);
CREATE INDEX requests_by_account_any ON requests (account, created_at DESC, id DESC);
CREATE INDEX requests_by_requester ON requests (requester, state, created_at DESC, id DESC);
CREATE INDEX requests_by_requester_any ON requests (requester, created_at DESC, id DESC);
CREATE INDEX requests_by_requester_account ON requests (requester, account, created_at DESC, id DESC);
-- LastUse: the newest first issuance per account and drill flag.
CREATE INDEX requests_last_use ON requests (account, drill, first_issued_at) WHERE issued > 0;

CREATE INDEX tokens_expiry ON tokens (expires_at, jti);
CREATE INDEX certs_seen_last ON certs_seen (last_seen);

-- Outbox retention: delivered rows are pruned after a retention, dead
-- letters once acknowledged and past it; pending rows never.
ALTER TABLE outbox ADD COLUMN acked_at INTEGER;
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE state = 'delivered';
CREATE INDEX outbox_dead ON outbox (created_at DESC) WHERE state = 'dead';
CREATE INDEX outbox_dead_acked ON outbox (acked_at) WHERE state = 'dead' AND acked_at IS NOT NULL;
CREATE INDEX outbox_pending_sink ON outbox (sink, created_at) WHERE state = 'pending';

-- Counters, kept by triggers in the transaction that changes the rows.
CREATE TABLE request_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO request_counts (state, n) SELECT state, COUNT(*) FROM requests GROUP BY state;
-- +goose StatementBegin
CREATE TRIGGER request_counts_insert AFTER INSERT ON requests
BEGIN
    INSERT INTO request_counts (state, n) VALUES (NEW.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER request_counts_update AFTER UPDATE OF state ON requests WHEN OLD.state IS NOT NEW.state
BEGIN
    UPDATE request_counts SET n = n - 1 WHERE state = OLD.state;
    INSERT INTO request_counts (state, n) VALUES (NEW.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER request_counts_delete AFTER DELETE ON requests
BEGIN
    UPDATE request_counts SET n = n - 1 WHERE state = OLD.state;
END;
-- +goose StatementEnd

CREATE TABLE token_count (one INTEGER PRIMARY KEY CHECK (one = 1), n INTEGER NOT NULL);
INSERT INTO token_count (one, n) SELECT 1, COUNT(*) FROM tokens;
-- +goose StatementBegin
CREATE TRIGGER token_count_insert AFTER INSERT ON tokens
BEGIN
    UPDATE token_count SET n = n + 1;
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER token_count_delete AFTER DELETE ON tokens
BEGIN
    UPDATE token_count SET n = n - 1;
END;
-- +goose StatementEnd

CREATE TABLE outbox_counts (sink TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (sink, state));
INSERT INTO outbox_counts (sink, state, n) SELECT sink, state, COUNT(*) FROM outbox GROUP BY sink, state;
-- +goose StatementBegin
CREATE TRIGGER outbox_counts_insert AFTER INSERT ON outbox
BEGIN
    INSERT INTO outbox_counts (sink, state, n) VALUES (NEW.sink, NEW.state, 1) ON CONFLICT (sink, state) DO UPDATE SET n = n + 1;
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER outbox_counts_update AFTER UPDATE OF state ON outbox WHEN OLD.state IS NOT NEW.state
BEGIN
    UPDATE outbox_counts SET n = n - 1 WHERE sink = OLD.sink AND state = OLD.state;
    INSERT INTO outbox_counts (sink, state, n) VALUES (NEW.sink, NEW.state, 1) ON CONFLICT (sink, state) DO UPDATE SET n = n + 1;
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER outbox_counts_delete AFTER DELETE ON outbox
BEGIN
    UPDATE outbox_counts SET n = n - 1 WHERE sink = OLD.sink AND state = OLD.state;
END;
-- +goose StatementEnd

-- +goose Down

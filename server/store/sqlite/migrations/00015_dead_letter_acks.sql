-- +goose Up
-- An acknowledged dead letter is no longer open work: the counters keep it
-- apart (state 'acked'), so that the health and the report count the dead
-- letters nobody dealt with from the counters alone, and the metrics still
-- count every dead letter kept.
DROP TRIGGER outbox_counts_insert;
DROP TRIGGER outbox_counts_update;
DROP TRIGGER outbox_counts_delete;

UPDATE outbox_counts SET n = n - (SELECT COUNT(*) FROM outbox o
    WHERE o.state = 'dead' AND o.acked_at IS NOT NULL AND o.sink = outbox_counts.sink) WHERE state = 'dead';
INSERT INTO outbox_counts (sink, state, n)
    SELECT sink, 'acked', COUNT(*) FROM outbox WHERE state = 'dead' AND acked_at IS NOT NULL GROUP BY sink
    ON CONFLICT (sink, state) DO UPDATE SET n = n + excluded.n;

-- +goose StatementBegin
CREATE TRIGGER outbox_counts_insert AFTER INSERT ON outbox
BEGIN
    INSERT INTO outbox_counts (sink, state, n)
        VALUES (NEW.sink, CASE WHEN NEW.state = 'dead' AND NEW.acked_at IS NOT NULL THEN 'acked' ELSE NEW.state END, 1)
        ON CONFLICT (sink, state) DO UPDATE SET n = n + 1;
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER outbox_counts_update AFTER UPDATE OF state, acked_at ON outbox
    WHEN (CASE WHEN OLD.state = 'dead' AND OLD.acked_at IS NOT NULL THEN 'acked' ELSE OLD.state END)
      IS NOT (CASE WHEN NEW.state = 'dead' AND NEW.acked_at IS NOT NULL THEN 'acked' ELSE NEW.state END)
BEGIN
    UPDATE outbox_counts SET n = n - 1
        WHERE sink = OLD.sink AND state = (CASE WHEN OLD.state = 'dead' AND OLD.acked_at IS NOT NULL THEN 'acked' ELSE OLD.state END);
    INSERT INTO outbox_counts (sink, state, n)
        VALUES (NEW.sink, CASE WHEN NEW.state = 'dead' AND NEW.acked_at IS NOT NULL THEN 'acked' ELSE NEW.state END, 1)
        ON CONFLICT (sink, state) DO UPDATE SET n = n + 1;
END;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE TRIGGER outbox_counts_delete AFTER DELETE ON outbox
BEGIN
    UPDATE outbox_counts SET n = n - 1
        WHERE sink = OLD.sink AND state = (CASE WHEN OLD.state = 'dead' AND OLD.acked_at IS NOT NULL THEN 'acked' ELSE OLD.state END);
END;
-- +goose StatementEnd

-- +goose Down

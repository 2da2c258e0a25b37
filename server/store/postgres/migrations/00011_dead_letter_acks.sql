-- +goose Up
-- An acknowledged dead letter is no longer open work: the counters keep it
-- apart (state 'acked'), so that the health and the report count the dead
-- letters nobody dealt with from the counters alone, and the metrics still
-- count every dead letter kept.
UPDATE outbox_counts c SET n = c.n - (SELECT COUNT(*) FROM outbox o
    WHERE o.state = 'dead' AND o.acked_at IS NOT NULL AND o.sink = c.sink) WHERE c.state = 'dead';
INSERT INTO outbox_counts (sink, state, n)
    SELECT sink, 'acked', COUNT(*) FROM outbox WHERE state = 'dead' AND acked_at IS NOT NULL GROUP BY sink
    ON CONFLICT (sink, state) DO UPDATE SET n = outbox_counts.n + excluded.n;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO outbox_counts (sink, state, n)
            SELECT sink, k, COUNT(*) FROM (SELECT sink, CASE WHEN state = 'dead' AND acked_at IS NOT NULL THEN 'acked' ELSE state END AS k FROM new_rows) x
            GROUP BY sink, k
            ON CONFLICT (sink, state) DO UPDATE SET n = outbox_counts.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO outbox_counts (sink, state, n)
            SELECT sink, k, SUM(d) FROM (
                SELECT sink, CASE WHEN state = 'dead' AND acked_at IS NOT NULL THEN 'acked' ELSE state END AS k, 1 AS d FROM new_rows
                UNION ALL
                SELECT sink, CASE WHEN state = 'dead' AND acked_at IS NOT NULL THEN 'acked' ELSE state END AS k, -1 AS d FROM old_rows) x
            GROUP BY sink, k HAVING SUM(d) <> 0
            ON CONFLICT (sink, state) DO UPDATE SET n = outbox_counts.n + excluded.n;
    ELSE
        INSERT INTO outbox_counts (sink, state, n)
            SELECT sink, k, -COUNT(*) FROM (SELECT sink, CASE WHEN state = 'dead' AND acked_at IS NOT NULL THEN 'acked' ELSE state END AS k FROM old_rows) x
            GROUP BY sink, k
            ON CONFLICT (sink, state) DO UPDATE SET n = outbox_counts.n + excluded.n;
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose Down

-- Retention for bookkeeping rows that only matter for a while: an Idempotency-Key protects retries
-- for a day (clients retry within minutes), a provider redelivers a webhook for days, not months.
-- Deleting across tenants goes through one SECURITY DEFINER function run by learner_stats, like the
-- statistics: the services' role still never sees another tenant's rows.
GRANT SELECT, DELETE ON idempotency_keys, payment_events TO learner_stats;
CREATE POLICY stats_prune ON idempotency_keys FOR ALL TO learner_stats USING (true);
CREATE POLICY stats_prune ON payment_events FOR ALL TO learner_stats USING (true);

CREATE FUNCTION prune_bookkeeping(keys_older_than interval, events_older_than interval)
RETURNS TABLE (idempotency_keys bigint, payment_events bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH k AS (DELETE FROM idempotency_keys WHERE claimed_at < now() - keys_older_than RETURNING 1),
         e AS (DELETE FROM payment_events WHERE received_at < now() - events_older_than RETURNING 1)
    SELECT (SELECT count(*) FROM k), (SELECT count(*) FROM e)
$$;
ALTER FUNCTION prune_bookkeeping(interval, interval) OWNER TO learner_stats;
REVOKE ALL ON FUNCTION prune_bookkeeping(interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_bookkeeping(interval, interval) TO learner_app;

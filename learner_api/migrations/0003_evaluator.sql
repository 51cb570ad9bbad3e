-- Per-course progress, computed from the evaluator's lesson_progress projection. security_invoker makes
-- the view obey the caller's row-level security instead of its owner's.
CREATE VIEW course_progress WITH (security_invoker = true) AS
SELECT l.tenant_id, p.learner_id, l.course_id,
       count(*) FILTER (WHERE p.completed_at IS NOT NULL) AS lessons_completed,
       (SELECT count(*) FROM lessons a WHERE a.tenant_id = l.tenant_id AND a.course_id = l.course_id) AS lessons,
       max(greatest(p.first_viewed_at, p.completed_at)) AS last_activity_at
FROM lesson_progress p
JOIN lessons l ON l.tenant_id = p.tenant_id AND l.id = p.lesson_id
GROUP BY l.tenant_id, p.learner_id, l.course_id;
GRANT SELECT ON course_progress TO learner_app;

-- The evaluator's alert rules look at the whole platform, but the services' role only ever sees one
-- tenant. This function is the one window across tenants: it returns counts and times per tenant (no
-- learner data), runs as the NOLOGIN role learner_stats, and only that role has a read-all policy.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'learner_stats') THEN
        CREATE ROLE learner_stats NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT SELECT ON tenants, progress_events, orders TO learner_stats;
CREATE POLICY stats_read ON tenants FOR SELECT TO learner_stats USING (true);
CREATE POLICY stats_read ON progress_events FOR SELECT TO learner_stats USING (true);
CREATE POLICY stats_read ON orders FOR SELECT TO learner_stats USING (true);

CREATE FUNCTION platform_tenant_stats()
RETURNS TABLE (tenant_id text, seconds_since_progress double precision, failed_purchases_1h bigint,
               unfulfilled_purchases bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.id,
           extract(epoch FROM now() - (SELECT max(received_at) FROM progress_events e WHERE e.tenant_id = t.id)),
           (SELECT count(*) FROM orders o WHERE o.tenant_id = t.id AND o.status = 'failed'
                AND o.created_at > now() - interval '1 hour'),
           (SELECT count(*) FROM orders o WHERE o.tenant_id = t.id AND o.status = 'pending'
                AND o.created_at < now() - interval '30 minutes')
    FROM tenants t
$$;
-- Giving a function away needs membership of the new owner (on PostgreSQL 16 the role's creator has
-- ADMIN but not SET on it by default); the migrating role owns every table anyway.
GRANT learner_stats TO CURRENT_USER;
ALTER FUNCTION platform_tenant_stats() OWNER TO learner_stats;
REVOKE ALL ON FUNCTION platform_tenant_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION platform_tenant_stats() TO learner_app;

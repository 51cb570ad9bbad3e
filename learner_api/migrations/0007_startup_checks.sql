-- learner-api checks at start that the database is at the migration version it expects: the services'
-- role may read (only) the list of applied migrations.
GRANT SELECT ON schema_migrations TO learner_app;

-- Take back the CREATE on the schema that 0002a_stats_role lent to learner_stats for giving it its
-- functions (only a grant made for it: where PUBLIC has CREATE, as before PostgreSQL 15, nothing was lent).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_namespace n, aclexplode(n.nspacl) a
               WHERE n.nspname = current_schema() AND a.grantee = 'learner_stats'::regrole
                 AND a.privilege_type = 'CREATE') THEN
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM learner_stats', current_schema());
    END IF;
END
$$;

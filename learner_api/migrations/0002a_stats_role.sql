-- Lets a migrating role that is not a superuser (the database owner with CREATEROLE, as on managed
-- PostgreSQL 15+) run 0003 and 0004. They give functions to learner_stats, and a function's new owner
-- needs CREATE on its schema; since PostgreSQL 15 only the database owner has that on `public`, so it is
-- lent to learner_stats here and taken back in 0007_startup_checks.
--
-- A new file rather than an edit of 0003/0004: those are applied in running databases, and the runner
-- refuses an applied migration whose text changed. A database that applied them already gets this file
-- (and 0007) as two no-ops in effect; a fresh one runs it before 0003.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'learner_stats') THEN
        CREATE ROLE learner_stats NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are per cluster: another database's migration made it at the same moment
END
$$;
DO $$
BEGIN
    IF NOT has_schema_privilege('learner_stats', current_schema(), 'CREATE') THEN
        EXECUTE format('GRANT CREATE ON SCHEMA %I TO learner_stats', current_schema());
    END IF;
END
$$;

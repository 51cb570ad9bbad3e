-- Content, enrollments, progress, store. Every table carries tenant_id and is guarded by row-level
-- security keyed on the transaction-local setting app.tenant_id (set by the API per transaction with
-- set_config('app.tenant_id', $1, true)). FORCE makes the policies apply to the table owner too, so
-- only a superuser or a BYPASSRLS role could see across tenants (the API refuses to run as either
-- outside development).
ALTER TABLE tenants ADD COLUMN content_version bigint NOT NULL DEFAULT 1;

CREATE TABLE courses (
    tenant_id    text NOT NULL REFERENCES tenants (id),
    id           text NOT NULL CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    title        text NOT NULL,
    summary      text NOT NULL DEFAULT '',
    published    boolean NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE lessons (
    tenant_id    text NOT NULL,
    id           text NOT NULL CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    course_id    text NOT NULL,
    position     integer NOT NULL CHECK (position >= 0),
    title        text NOT NULL,
    body         text NOT NULL,
    -- a paid lesson is served only to a learner entitled to a product of its course
    paid         boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, course_id, position),
    FOREIGN KEY (tenant_id, course_id) REFERENCES courses (tenant_id, id)
);

CREATE TABLE products (
    tenant_id    text NOT NULL,
    id           text NOT NULL CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    course_id    text NOT NULL,
    title        text NOT NULL,
    -- the only source of prices: a client never sends one
    price_cents  integer NOT NULL CHECK (price_cents > 0),
    currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    active       boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, course_id) REFERENCES courses (tenant_id, id)
);

CREATE TABLE enrollments (
    tenant_id    text NOT NULL,
    learner_id   text NOT NULL,
    course_id    text NOT NULL,
    enrolled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, learner_id, course_id),
    FOREIGN KEY (tenant_id, course_id) REFERENCES courses (tenant_id, id)
);

-- Raw progress events, written by the evaluator from the Redis Stream; (tenant_id, event_id) makes a
-- redelivered event a no-op (ON CONFLICT ON CONSTRAINT progress_events_pkey DO NOTHING).
CREATE TABLE progress_events (
    tenant_id    text NOT NULL,
    event_id     uuid NOT NULL,
    learner_id   text NOT NULL,
    lesson_id    text NOT NULL,
    verb         text NOT NULL CHECK (verb IN ('lesson_viewed', 'lesson_completed')),
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT progress_events_pkey PRIMARY KEY (tenant_id, event_id)
);

-- Projection per learner and lesson, kept by the evaluator in the same transaction as the events.
CREATE TABLE lesson_progress (
    tenant_id        text NOT NULL,
    learner_id       text NOT NULL,
    lesson_id        text NOT NULL,
    first_viewed_at  timestamptz,
    completed_at     timestamptz,
    PRIMARY KEY (tenant_id, learner_id, lesson_id)
);

CREATE TABLE orders (
    tenant_id    text NOT NULL,
    id           uuid NOT NULL,
    learner_id   text NOT NULL,
    product_id   text NOT NULL,
    amount_cents integer NOT NULL,
    currency     text NOT NULL,
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid', 'failed')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    paid_at      timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, product_id) REFERENCES products (tenant_id, id)
);

-- Checkout's Idempotency-Key: claimed (in_flight) in its own transaction, completed with the response.
CREATE TABLE idempotency_keys (
    tenant_id        text NOT NULL,
    learner_id       text NOT NULL,
    key              text NOT NULL,
    request_hash     text NOT NULL,
    state            text NOT NULL CHECK (state IN ('in_flight', 'done')),
    response_status  integer,
    response_body    jsonb,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, learner_id, key)
);

-- Payment provider events already processed (webhooks are delivered at least once).
CREATE TABLE payment_events (
    tenant_id    text NOT NULL,
    event_id     text NOT NULL,
    type         text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);

CREATE TABLE entitlements (
    tenant_id    text NOT NULL,
    learner_id   text NOT NULL,
    product_id   text NOT NULL,
    order_id     uuid NOT NULL,
    granted_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT entitlements_once UNIQUE (tenant_id, learner_id, product_id),
    FOREIGN KEY (tenant_id, product_id) REFERENCES products (tenant_id, id)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'courses', 'lessons', 'products', 'enrollments', 'progress_events',
                             'lesson_progress', 'orders', 'idempotency_keys', 'payment_events', 'entitlements']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (%I = current_setting(''app.tenant_id'', true)) '
            'WITH CHECK (%I = current_setting(''app.tenant_id'', true))',
            t, CASE WHEN t = 'tenants' THEN 'id' ELSE 'tenant_id' END,
            CASE WHEN t = 'tenants' THEN 'id' ELSE 'tenant_id' END);
    END LOOP;
END
$$;

-- The role the services run as (its login members get the privileges). Not the owner of anything.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'learner_app') THEN
        CREATE ROLE learner_app NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are per cluster: another database's migration made it at the same moment
END
$$;
GRANT SELECT, INSERT, UPDATE ON tenants, courses, lessons, products, enrollments, progress_events,
    lesson_progress, orders, idempotency_keys, payment_events, entitlements TO learner_app;
GRANT DELETE ON idempotency_keys TO learner_app;

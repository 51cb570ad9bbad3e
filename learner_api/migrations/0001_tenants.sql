-- Every row of the platform belongs to a tenant (TENANT_MODE=enabled); with tenancy off, everything
-- lives in the one 'default' tenant.
CREATE TABLE tenants (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenants (id, name) VALUES ('default', 'Default tenant');

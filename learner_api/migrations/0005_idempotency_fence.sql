-- A checkout's claim on its Idempotency-Key carries a fencing token. A retry that takes over a claim it
-- believes abandoned gets a new token, and an order commits only while its request's token is still the
-- key's (checked with the key's row locked, in the order's own transaction): however slow the first
-- request was, one key can never make two orders. Rows completed before this migration keep NULL.
ALTER TABLE idempotency_keys ADD COLUMN fence uuid;

-- Managed certificates: obtained over ACME (RFC 8555, HTTP-01) by the
-- control API's background worker (control-api/src/acme/). The issued
-- certificate lives in `certificates` with kind 'managed'; its order's
-- state lives in `managed_domains`.

-- 'custom': the tenant's own; 'managed': obtained over ACME.
ALTER TABLE certificates DROP CONSTRAINT certificates_kind_check;
ALTER TABLE certificates ADD CONSTRAINT certificates_kind_check CHECK (kind IN ('custom', 'managed'));

-- One row per hostname whose certificate the platform manages. Until its
-- first certificate is issued the hostname serves only its HTTP-01 token
-- (gateways answer /.well-known/acme-challenge/ from the snapshot).
CREATE TABLE managed_domains (
    hostname TEXT PRIMARY KEY REFERENCES hostnames(hostname) ON DELETE CASCADE,
    -- pending: never issued; issued; failed: the last attempt failed (a
    -- certificate issued earlier, if any, is still served); renewing.
    state TEXT NOT NULL CHECK (state IN ('pending', 'issued', 'failed', 'renewing')),
    -- The CA's reason for the last failure.
    error TEXT,
    -- The ACME order being worked on, resumed after a restart.
    order_url TEXT,
    -- The HTTP-01 challenge gateways answer while one is published.
    challenge_token TEXT,
    challenge_key_authorization TEXT,
    -- Consecutive failures (for back-off).
    failures BIGINT NOT NULL DEFAULT 0,
    -- When the worker should next look at it: now for a new one, the
    -- renewal time once issued, the back-off (or the CA's Retry-After)
    -- after a failure.
    next_attempt_ms BIGINT NOT NULL,
    -- A worker's claim: one worker per order across replicas. A claim
    -- whose lease has run out (its replica died) is taken over.
    lease_owner TEXT,
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX managed_domains_due ON managed_domains (next_attempt_ms);

-- The platform's ACME account per directory URL; its credentials (a
-- private key) sealed with the master key like certificate keys.
CREATE TABLE acme_accounts (
    directory_url TEXT PRIMARY KEY,
    credentials_sealed BYTEA NOT NULL,
    created_ms BIGINT NOT NULL
);

-- Managed certificates: obtained over ACME (RFC 8555, HTTP-01) by the
-- control API's background worker (control-api/src/acme/). The issued
-- certificate lives in `certificates` with kind 'managed'; its order's
-- state lives in `managed_domains`.

-- SQLite cannot alter a CHECK: the table is rebuilt with 'managed' allowed.
CREATE TABLE certificates_v2 (
    hostname TEXT PRIMARY KEY REFERENCES hostnames(hostname) ON DELETE CASCADE,
    -- 'custom': the tenant's own; 'managed': obtained over ACME.
    kind TEXT NOT NULL CHECK (kind IN ('custom', 'managed')),
    cert_pem TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    issuer TEXT NOT NULL,
    names_json TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
INSERT INTO certificates_v2 (hostname, kind, cert_pem, key_sealed, issuer, names_json, not_before, not_after, updated_ms)
    SELECT hostname, kind, cert_pem, key_sealed, issuer, names_json, not_before, not_after, updated_ms FROM certificates;
DROP TABLE certificates;
ALTER TABLE certificates_v2 RENAME TO certificates;

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
    credentials_sealed BLOB NOT NULL,
    created_ms BIGINT NOT NULL
);

-- Quotas added after the first release: tokens a tenant may hold at once
-- (revoked ones do not count), and the ceiling for an app's max_inflight.
-- Existing tenants get the platform defaults.
ALTER TABLE tenants ADD COLUMN max_tokens BIGINT NOT NULL DEFAULT 20;
ALTER TABLE tenants ADD COLUMN max_inflight BIGINT NOT NULL DEFAULT 100;

-- The per-tenant request rate, shared by every replica: a fixed window per
-- tenant, counted by one UPSERT per request of a tenant token
-- (Store::count_tenant_request). No foreign key: the row is a counter on
-- the hot path, and tenants are never deleted.
CREATE TABLE tenant_rate (
    tenant_id BIGINT PRIMARY KEY,
    -- Start of the current window, ms since the Unix epoch.
    window_start BIGINT NOT NULL,
    -- Requests counted in it (refused ones included).
    requests BIGINT NOT NULL
);

CREATE TABLE tenants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    max_apps BIGINT NOT NULL,
    max_component_bytes BIGINT NOT NULL,
    max_total_bytes BIGINT NOT NULL,
    max_versions_per_app BIGINT NOT NULL,
    max_memory_bytes BIGINT NOT NULL,
    max_cpu_ms BIGINT NOT NULL,
    max_wall_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT REFERENCES tenants(id),
    role TEXT NOT NULL CHECK (role IN ('operator', 'tenant')),
    hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    last_used_ms BIGINT,
    revoked_ms BIGINT
);
CREATE INDEX tokens_tenant ON tokens(tenant_id);

CREATE TABLE components (
    digest TEXT PRIMARY KEY,
    size_bytes BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE tenant_components (
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    digest TEXT NOT NULL REFERENCES components(digest),
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, digest)
);

CREATE TABLE apps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    active_version_id BIGINT,
    next_version BIGINT NOT NULL DEFAULT 1,
    created_ms BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id BIGINT NOT NULL REFERENCES apps(id),
    number BIGINT NOT NULL,
    digest TEXT NOT NULL REFERENCES components(digest),
    env_json TEXT NOT NULL,
    limits_json TEXT NOT NULL,
    outbound_json TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (app_id, number)
);

CREATE TABLE hostnames (
    hostname TEXT PRIMARY KEY,
    app_id BIGINT NOT NULL REFERENCES apps(id),
    kind TEXT NOT NULL CHECK (kind IN ('platform', 'custom')),
    created_ms BIGINT NOT NULL
);
CREATE INDEX hostnames_app ON hostnames(app_id);

CREATE TABLE blob_chunks (
    digest TEXT NOT NULL,
    idx BIGINT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (digest, idx)
);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT,
    token_id BIGINT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX audit_tenant ON audit(tenant_id, id);

-- TLS settings the control API gives every gateway (see
-- control-api/src/platform_tls.rs). A change to them is a feed row with
-- app_id 0 (no app has that id): for every PoP (the certificate) or for one
-- (its ticket keys).

-- The platform certificate (*.<platform domain>), set by the operator; it
-- wins over the gateways' --tls-cert files. The key is sealed with the
-- master key like tenants' keys.
CREATE TABLE platform_certificate (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    cert_pem TEXT NOT NULL,
    key_sealed BYTEA NOT NULL,
    issuer TEXT NOT NULL,
    names_json TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- Session-ticket keys per PoP: one per PoP per slot (an hour), made by
-- whichever replica gets there first (the primary key settles races);
-- sealed with the master key; deleted once expired.
CREATE TABLE ticket_keys (
    pop_id BIGINT NOT NULL REFERENCES pops(id) ON DELETE CASCADE,
    slot BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    secret_sealed BYTEA NOT NULL,
    not_after_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (pop_id, slot)
);

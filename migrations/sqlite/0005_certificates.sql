-- Tenants' own certificates for their custom hostnames: at most one per
-- hostname, replaced by a rotation. The private key is sealed with the
-- operator's master key (AES-256-GCM, bound to the hostname; see
-- control-api/src/master_key.rs): the database never holds it in clear.
-- Deleted with its hostname, in the same transaction
-- (Store::remove_hostname); the foreign key cascades too where enforced.
CREATE TABLE certificates (
    hostname TEXT PRIMARY KEY REFERENCES hostnames(hostname) ON DELETE CASCADE,
    -- 'custom': the tenant's own.
    kind TEXT NOT NULL CHECK (kind IN ('custom')),
    -- PEM chain, leaf first, as uploaded.
    cert_pem TEXT NOT NULL,
    -- The PEM private key, sealed: version byte, nonce, ciphertext, tag.
    key_sealed BLOB NOT NULL,
    -- What the leaf says, for listings.
    issuer TEXT NOT NULL,
    names_json TEXT NOT NULL,
    -- Validity, seconds since the Unix epoch.
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

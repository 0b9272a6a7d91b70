-- An app's plain config and its secrets: set by its tenant, applied to
-- every live version (stable and canary) outside rollout steps, delivered
-- to gateways in the app's desired state. A config row has its value; a
-- secret's value is sealed with the master key (AES-256-GCM, its AAD
-- binding it to the app and the name) and never leaves the control plane
-- except to gateways.
CREATE TABLE app_settings (
    app_id BIGINT NOT NULL REFERENCES apps(id),
    kind TEXT NOT NULL CHECK (kind IN ('config', 'secret')),
    name TEXT NOT NULL,
    value TEXT,
    value_sealed BLOB,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (app_id, kind, name)
);

CREATE TABLE pops (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    region TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE gateways (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pop_id BIGINT NOT NULL REFERENCES pops(id),
    token_hash TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT,
    last_seen_ms BIGINT,
    applied_revision BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    report_json TEXT NOT NULL DEFAULT '[]',
    failed_json TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX gateways_pop ON gateways(pop_id);

-- The change feed: one row per change to what gateways serve. Its id is the
-- desired-state revision.
CREATE TABLE state_changes (
    revision BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id BIGINT NOT NULL,
    at_ms BIGINT NOT NULL
);

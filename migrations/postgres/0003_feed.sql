-- The change feed, decided once for everything that rides on it (see
-- control-api/src/desired_state.rs): a change and its feed row commit in one
-- transaction, and the revision is taken from this one-row counter under its
-- row lock inside that transaction, so revisions commit in revision order
-- and a poller that has seen revision N has seen every revision below it.
CREATE TABLE feed_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- The newest revision.
    revision BIGINT NOT NULL,
    -- Feed rows up to here have been pruned: a poller older than this gets
    -- a full snapshot.
    pruned_through BIGINT NOT NULL
);
INSERT INTO feed_head (id, revision, pruned_through)
SELECT 1, COALESCE(MAX(revision), 0), COALESCE(MIN(revision) - 1, 0) FROM state_changes;

ALTER TABLE state_changes ALTER COLUMN revision DROP IDENTITY IF EXISTS;
-- The PoP a change is for; NULL: every PoP. Pollers of other PoPs are not woken.
ALTER TABLE state_changes ADD COLUMN pop_id BIGINT REFERENCES pops(id);
CREATE INDEX state_changes_app ON state_changes (app_id, revision);

-- Reference lookups by digest (uploads, blob collection, PoP downloads).
CREATE INDEX tenant_components_digest ON tenant_components (digest);
CREATE INDEX versions_digest ON versions (digest);

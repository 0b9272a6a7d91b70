-- Placement and rollouts (see scheduler/ and control-api/src/rollouts/).

-- The PoPs an app is served at: a label selector over PoP labels
-- (scheduler/src/selector.rs), '' for every PoP.
ALTER TABLE apps ADD COLUMN placement TEXT NOT NULL DEFAULT '';
-- How a request picks the stable or the canary version: '' (the client
-- address), 'header:<name>' or 'cookie:<name>'.
ALTER TABLE apps ADD COLUMN affinity TEXT NOT NULL DEFAULT '';
-- The app's own rollout policy for canary deploys that name none: steps in
-- `gannet deploy --steps` syntax and a bake time; NULL: the platform's.
ALTER TABLE apps ADD COLUMN rollout_steps TEXT;
ALTER TABLE apps ADD COLUMN rollout_bake_ms BIGINT;

-- One progressive rollout of a canary version over the app's stable one
-- (apps.active_version_id). Written by the scheduler's leader (every write
-- checks its lease epoch in the same transaction) and by tenants' actions
-- that end a rollout at once (a rollback, a newer deploy); row_version
-- tells each writer whether the row changed under it.
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id BIGINT NOT NULL REFERENCES apps(id),
    stable_version BIGINT NOT NULL,
    canary_version BIGINT NOT NULL,
    -- scheduler::rollout::Policy as JSON.
    policy_json TEXT NOT NULL,
    -- The app's PoPs and their labels when the rollout was made.
    placed_json TEXT NOT NULL,
    -- scheduler::rollout::Phase as JSON, and its name for queries.
    phase_json TEXT NOT NULL,
    phase TEXT NOT NULL,
    -- Every transition (scheduler::rollout::Transition), oldest first.
    history_json TEXT NOT NULL DEFAULT '[]',
    -- The canary's weight per placed PoP (percent), as gateways get it.
    weights_json TEXT NOT NULL DEFAULT '{}',
    -- Per step (from 0): the revision its desired state was published in.
    published_json TEXT NOT NULL DEFAULT '{}',
    -- The latest figures of the canary and its baseline, for status.
    analysis_json TEXT NOT NULL DEFAULT '{}',
    -- An operator's or tenant's action the leader applies next:
    -- promote, pause, resume or abort.
    pending_action TEXT,
    row_version BIGINT NOT NULL DEFAULT 0,
    leader_epoch BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX rollouts_app ON rollouts (app_id, id);
CREATE INDEX rollouts_phase ON rollouts (phase);

-- The scheduler's leader lease: the replica holding it runs rollouts; the
-- epoch goes up each time the lease changes hands, and every write the
-- leader makes checks it (a fencing token).
CREATE TABLE scheduler_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
INSERT INTO scheduler_lease (id, holder, epoch, expires_ms) VALUES (1, '', 0, 0);

-- The latest cumulative counters each gateway pushed per app version
-- (POST /v1/pops/{pop}/report), with the boot they count from: the leader
-- diffs successive ones per (gateway, boot).
CREATE TABLE version_reports (
    gateway_id BIGINT NOT NULL REFERENCES gateways(id),
    app_key TEXT NOT NULL,
    version BIGINT NOT NULL,
    boot_id TEXT NOT NULL,
    counters_json TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, app_key, version)
);

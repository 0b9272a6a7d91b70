-- Proof that a tenant controls a custom hostname (control-api/src/ownership/):
-- a DNS TXT record at _gannet-challenge.<hostname>, or the token served by
-- the gateways at http://<hostname>/.well-known/gannet-challenge/<token>,
-- or (managed certificates) the CA's HTTP-01 validation. A custom hostname
-- serves traffic only once verified.
ALTER TABLE hostnames ADD COLUMN verification_token TEXT;
-- The revision that delivered the token to gateways (the HTTP check waits
-- for their ACKs).
ALTER TABLE hostnames ADD COLUMN token_revision BIGINT;
ALTER TABLE hostnames ADD COLUMN verified_ms BIGINT;
-- platform, legacy (claimed before proofs existed), dns, http, acme,
-- operator.
ALTER TABLE hostnames ADD COLUMN verified_by TEXT;
ALTER TABLE hostnames ADD COLUMN next_check_ms BIGINT;
ALTER TABLE hostnames ADD COLUMN check_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hostnames ADD COLUMN check_error TEXT;

-- What was served before keeps serving: platform hostnames, and custom ones
-- claimed before this change (listed by `gannet admin domains list
-- --legacy` to be re-verified), except managed ones still waiting for
-- their first certificate.
UPDATE hostnames SET verified_ms = created_ms, verified_by = 'platform' WHERE kind = 'platform';
UPDATE hostnames SET verified_ms = created_ms, verified_by = 'legacy'
    WHERE kind = 'custom'
      AND (NOT EXISTS (SELECT 1 FROM managed_domains m WHERE m.hostname = hostnames.hostname)
           OR EXISTS (SELECT 1 FROM certificates c WHERE c.hostname = hostnames.hostname));
CREATE INDEX hostnames_unverified ON hostnames (next_check_ms) WHERE verified_ms IS NULL;

-- What a gateway says about itself when it starts (POST
-- /v1/pops/{pop}/register): its architecture, the hash that tells the
-- artifacts its engine compiles apart, its Gannet version, the addresses it
-- listens on (a JSON array of strings), and a random id per process start.
-- NULL until it registers; replaced at each start.
ALTER TABLE gateways ADD COLUMN arch TEXT;
ALTER TABLE gateways ADD COLUMN engine_compat TEXT;
ALTER TABLE gateways ADD COLUMN gannet_version TEXT;
ALTER TABLE gateways ADD COLUMN listen_json TEXT;
ALTER TABLE gateways ADD COLUMN boot_id TEXT;
ALTER TABLE gateways ADD COLUMN registered_ms BIGINT;

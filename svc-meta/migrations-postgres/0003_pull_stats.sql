-- Postgres twin of ../migrations/0003_pull_stats.sql (keep the two in step).
-- Pulls of each manifest (a GET of it, by tag or digest, through any
-- gateway), for retention's `pulledWithin` and `mostRecentlyPulledCount`
-- and for download counts. Gateways report them in batches.
ALTER TABLE manifests ADD COLUMN pulled_at BIGINT;
ALTER TABLE manifests ADD COLUMN pull_count BIGINT NOT NULL DEFAULT 0;

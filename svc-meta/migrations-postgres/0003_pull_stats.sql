-- Postgres twin of ../migrations/0003_pull_stats.sql (keep the two in step).
-- Pulls of each manifest (a GET of it, by tag or digest, through any
-- gateway), for retention's `pulledWithin` and `mostRecentlyPulledCount`
-- and for download counts. Gateways report them in batches. A table of its
-- own, so that counting pulls never locks a row a push holds.
CREATE TABLE manifest_pulls (
    repo        TEXT COLLATE "C" NOT NULL,
    digest      TEXT COLLATE "C" NOT NULL,
    pull_count  BIGINT NOT NULL,
    -- Unix seconds of the last pull.
    pulled_at   BIGINT NOT NULL,
    PRIMARY KEY (repo, digest)
);

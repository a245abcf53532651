-- Garbage collection follows the garbage: instead of scanning every link and
-- every blob, the writes that can create garbage queue what they may have
-- left behind, and a collection reads only these queues.

-- A repository's link that may have no manifest referencing it: queued when
-- the link is made and when a manifest that referenced the blob is deleted.
-- A collection looks at a row once `queued_at` is older than `gcDelay`.
CREATE TABLE gc_links (
    repo       TEXT   NOT NULL,
    digest     TEXT   NOT NULL,
    queued_at  BIGINT NOT NULL,
    PRIMARY KEY (repo, digest)
);

CREATE INDEX gc_links_queued ON gc_links (queued_at);

-- A digest whose last link may be gone (a link was collected or deleted):
-- svc-blob removes its bytes if nothing links or references it, then the
-- row goes.
CREATE TABLE gc_blobs (
    digest  TEXT   NOT NULL PRIMARY KEY,
    since   BIGINT NOT NULL
);

-- Links that no manifest of their repository references today.
INSERT INTO gc_links (repo, digest, queued_at)
SELECT l.repo, l.digest, l.created_at FROM blob_links l
WHERE NOT EXISTS (SELECT 1 FROM manifest_refs r
                  WHERE r.repo = l.repo AND r.kind = 'blob' AND r.target = l.digest);

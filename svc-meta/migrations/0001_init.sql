-- The namespace: repositories, manifests, tags, repo-to-blob links and the
-- references of each manifest (for GC marking). Written to run on SQLite and
-- (with BLOB -> BYTEA) on Postgres. Digests are stored as their text form
-- `algorithm:hex`; timestamps are Unix seconds.

CREATE TABLE repositories (
    name        TEXT   NOT NULL PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE manifests (
    repo           TEXT   NOT NULL REFERENCES repositories (name),
    digest         TEXT   NOT NULL,
    media_type     TEXT   NOT NULL,
    -- `artifactType`, or the config media type of an image manifest.
    artifact_type  TEXT,
    content        BLOB   NOT NULL,
    size           BIGINT NOT NULL,
    -- Digest of the `subject` descriptor, NULL when none.
    subject        TEXT,
    -- JSON object of string annotations.
    annotations    TEXT   NOT NULL DEFAULT '{}',
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (repo, digest)
);

CREATE INDEX manifests_repo_subject ON manifests (repo, subject);

CREATE TABLE tags (
    repo        TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    digest      TEXT   NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (repo, name),
    FOREIGN KEY (repo, digest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);

CREATE INDEX tags_repo_digest ON tags (repo, digest);

CREATE TABLE blob_links (
    repo        TEXT   NOT NULL REFERENCES repositories (name),
    digest      TEXT   NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (repo, digest)
);

-- GC mark: is a digest linked in any repository.
CREATE INDEX blob_links_digest ON blob_links (digest);

-- What each manifest references: a blob (config, layer) or a child manifest
-- (of an index).
CREATE TABLE manifest_refs (
    repo    TEXT NOT NULL,
    digest  TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
    target  TEXT NOT NULL,
    PRIMARY KEY (repo, digest, kind, target),
    FOREIGN KEY (repo, digest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);

-- GC mark: is a digest referenced by any manifest.
CREATE INDEX manifest_refs_target ON manifest_refs (target);

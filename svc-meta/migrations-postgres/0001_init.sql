-- The namespace on Postgres: the same tables, keys and indexes as the SQLite
-- schema in ../migrations (keep the two in step), with BYTEA for bytes and
-- the "C" collation on every name, so that tags and repositories sort and
-- page in byte order as the distribution spec requires, whatever the
-- database's locale. Digests are text `algorithm:hex`; timestamps are Unix
-- seconds.

CREATE TABLE repositories (
    name        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE manifests (
    repo           TEXT COLLATE "C" NOT NULL REFERENCES repositories (name),
    digest         TEXT COLLATE "C" NOT NULL,
    media_type     TEXT   NOT NULL,
    -- `artifactType`, or the config media type of an image manifest.
    artifact_type  TEXT,
    content        BYTEA  NOT NULL,
    size           BIGINT NOT NULL,
    -- Digest of the `subject` descriptor, NULL when none.
    subject        TEXT COLLATE "C",
    -- JSON object of string annotations.
    annotations    TEXT   NOT NULL DEFAULT '{}',
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (repo, digest)
);

CREATE INDEX manifests_repo_subject ON manifests (repo, subject);

CREATE TABLE tags (
    repo        TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    digest      TEXT COLLATE "C" NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (repo, name),
    FOREIGN KEY (repo, digest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);

CREATE INDEX tags_repo_digest ON tags (repo, digest);

CREATE TABLE blob_links (
    repo        TEXT COLLATE "C" NOT NULL REFERENCES repositories (name),
    digest      TEXT COLLATE "C" NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (repo, digest)
);

-- GC mark: is a digest linked in any repository.
CREATE INDEX blob_links_digest ON blob_links (digest);

-- What each manifest references: a blob (config, layer) or a child manifest
-- (of an index).
CREATE TABLE manifest_refs (
    repo    TEXT COLLATE "C" NOT NULL,
    digest  TEXT COLLATE "C" NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
    target  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (repo, digest, kind, target),
    FOREIGN KEY (repo, digest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);

-- GC mark: is a digest referenced by any manifest.
CREATE INDEX manifest_refs_target ON manifest_refs (target);

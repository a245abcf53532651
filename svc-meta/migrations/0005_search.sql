-- Search (svc-meta/src/store/search.rs): what it shows of each manifest, and
-- what signed-in users mark.

-- The facts of an image manifest (svc-meta/src/facts.rs) as JSON, taken
-- at push from the manifest and its config: platform, sizes, layers,
-- history, creation time and descriptive annotations. NULL for an index
-- (its children have theirs) and for a manifest stored before search.
ALTER TABLE manifests ADD COLUMN facts TEXT;
-- The platforms of the manifest, `os/arch[/variant]` joined by commas: its
-- own, or those of an index's children. NULL when none is known.
ALTER TABLE manifests ADD COLUMN platforms TEXT;
-- When the image was made (Unix seconds): its `created` annotation or
-- config time, else its first push. For an index, the newest child's.
-- NULL for a manifest stored before search (its `created_at` stands in).
ALTER TABLE manifests ADD COLUMN made_at BIGINT;

-- Repositories a user starred or bookmarked (zot's userprefs). No foreign
-- key: queries join the marks with the repositories that exist.
CREATE TABLE user_marks (
    username   TEXT   NOT NULL,
    kind       TEXT   NOT NULL CHECK (kind IN ('star', 'bookmark')),
    repo       TEXT   NOT NULL,
    marked_at  BIGINT NOT NULL,
    PRIMARY KEY (username, kind, repo)
);

-- Star counts per repository.
CREATE INDEX user_marks_repo ON user_marks (repo, kind);

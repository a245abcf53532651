//! The htpasswd file: `user:hash` lines with bcrypt hashes (`$2a$`, `$2b$`,
//! `$2y$`), re-read whenever the file changes. Other hash schemes are
//! skipped with a warning: they are too cheap to guess against.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

#[derive(Debug)]
struct Loaded {
    stamp: Stamp,
    users: HashMap<String, String>,
}

/// A watched htpasswd file.
#[derive(Debug)]
pub struct Htpasswd {
    path: PathBuf,
    loaded: Mutex<Loaded>,
    /// A hash no password matches, checked for unknown users so that a
    /// wrong user costs as long as a wrong password.
    decoy: String,
}

fn parse(text: &str, path: &Path) -> HashMap<String, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            tracing::warn!(file = %path.display(), line = i + 1, "htpasswd line without ':' skipped");
            continue;
        };
        if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            tracing::warn!(file = %path.display(), line = i + 1, user, "htpasswd entry is not bcrypt; skipped");
            continue;
        }
        users.insert(user.to_string(), hash.to_string());
    }
    users
}

fn read(path: &Path) -> std::io::Result<Loaded> {
    let before = stamp(path)?;
    let text = std::fs::read_to_string(path)?;
    Ok(Loaded {
        stamp: before,
        users: parse(&text, path),
    })
}

impl Htpasswd {
    pub fn load(path: &Path) -> std::io::Result<Arc<Self>> {
        let loaded = read(path)?;
        tracing::info!(file = %path.display(), users = loaded.users.len(), "htpasswd loaded");
        let decoy = bcrypt::hash(uuid::Uuid::new_v4().to_string(), bcrypt::DEFAULT_COST)
            .expect("bcrypt of a fresh string");
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            loaded: Mutex::new(loaded),
            decoy,
        }))
    }

    /// Re-read the file if it changed; true when it did. A file that
    /// cannot be read keeps the last good version (and is logged).
    pub fn refresh(&self) -> bool {
        let now = match stamp(&self.path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "htpasswd unreadable; keeping the last version");
                return false;
            }
        };
        if self.loaded.lock().stamp == now {
            return false;
        }
        match read(&self.path) {
            Ok(l) => {
                tracing::info!(file = %self.path.display(), users = l.users.len(), "htpasswd reloaded");
                *self.loaded.lock() = l;
                true
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "htpasswd unreadable; keeping the last version");
                false
            }
        }
    }

    /// Whether the user exists (the file's current version).
    pub fn has_user(&self, user: &str) -> bool {
        self.loaded.lock().users.contains_key(user)
    }

    /// Check a password; bcrypt runs on the blocking pool.
    pub async fn verify(self: &Arc<Self>, user: &str, password: &str) -> bool {
        self.refresh();
        let (hash, known) = match self.loaded.lock().users.get(user) {
            Some(h) => (h.clone(), true),
            None => (self.decoy.clone(), false),
        };
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, pw: &str) -> String {
        format!("{user}:{}\n", bcrypt::hash(pw, 4).unwrap())
    }

    #[tokio::test]
    async fn verifies_bcrypt_entries_and_skips_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let text = format!(
            "# users\n{}{}md5user:$apr1$abc$def\nbroken line\n",
            entry("alice", "wonderland"),
            entry("bob", "builder")
        );
        std::fs::write(&path, text).unwrap();
        let h = Htpasswd::load(&path).unwrap();
        assert!(h.verify("alice", "wonderland").await);
        assert!(!h.verify("alice", "builder").await);
        assert!(h.verify("bob", "builder").await);
        assert!(!h.verify("carol", "wonderland").await);
        assert!(!h.has_user("md5user"));
    }

    #[tokio::test]
    async fn picks_up_changes_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, entry("alice", "one")).unwrap();
        let h = Htpasswd::load(&path).unwrap();
        assert!(h.verify("alice", "one").await);
        // Replace the file (as editors and htpasswd(1) do): new inode.
        let tmp = dir.path().join("htpasswd.new");
        std::fs::write(
            &tmp,
            format!("{}{}", entry("alice", "two"), entry("dave", "x")),
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(h.refresh());
        assert!(!h.refresh(), "unchanged file reloads nothing");
        assert!(!h.verify("alice", "one").await);
        assert!(h.verify("alice", "two").await);
        assert!(h.verify("dave", "x").await);
        // A vanished file keeps the last good version.
        std::fs::remove_file(&path).unwrap();
        assert!(!h.refresh());
        assert!(h.verify("dave", "x").await);
    }
}

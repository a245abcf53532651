//! The blob stores of one blob role: the top-level store and one per
//! `storage.subPaths` entry, each a directory or a bucket of its own. A
//! repository's blobs live in the store its name routes to (zot's rule: the
//! first component of a name with more than one), so every request that
//! names bytes names the repository too.

use crate::BlobStore;
use capstan_runtime::config::route_prefix;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The stores, by subpath.
#[derive(Clone)]
pub struct Stores {
    default: Arc<dyn BlobStore>,
    /// By subpath name (the key without slashes).
    sub: Arc<BTreeMap<String, Arc<dyn BlobStore>>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("subpaths", &self.sub.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl From<Arc<dyn BlobStore>> for Stores {
    fn from(store: Arc<dyn BlobStore>) -> Self {
        Self::new(store, BTreeMap::new())
    }
}

impl Stores {
    /// `default` for every repository but those of the `sub` entries.
    pub fn new(default: Arc<dyn BlobStore>, sub: BTreeMap<String, Arc<dyn BlobStore>>) -> Self {
        Self {
            default,
            sub: Arc::new(sub),
        }
    }

    /// The store holding `repo`'s blobs (the top-level one for an empty
    /// name, which internal callers use).
    pub fn for_repo(&self, repo: &str) -> &Arc<dyn BlobStore> {
        route_prefix(repo)
            .and_then(|first| self.sub.get(first))
            .unwrap_or(&self.default)
    }

    /// Every store with its subpath name (`""` for the top-level one).
    pub fn all(&self) -> Vec<(&str, &Arc<dyn BlobStore>)> {
        std::iter::once(("", &self.default))
            .chain(self.sub.iter().map(|(k, v)| (k.as_str(), v)))
            .collect()
    }

    /// The top-level store.
    pub fn default_store(&self) -> &Arc<dyn BlobStore> {
        &self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FsStore;

    #[tokio::test]
    async fn repositories_route_by_their_first_component() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let root = dir.path().join(name);
            async move { Arc::new(FsStore::new(root, false).await.unwrap()) as Arc<dyn BlobStore> }
        };
        let (top, team) = (open("top").await, open("team").await);
        let stores = Stores::new(
            top.clone(),
            BTreeMap::from([("team".to_string(), team.clone())]),
        );
        for (repo, want) in [
            ("team/app", &team),
            ("team/a/b", &team),
            ("team", &top),
            ("teams/app", &top),
            ("other/team/app", &top),
            ("", &top),
        ] {
            assert!(Arc::ptr_eq(stores.for_repo(repo), want), "{repo}");
        }
        assert_eq!(stores.all().len(), 2);
    }
}

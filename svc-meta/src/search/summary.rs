//! Image, manifest and repository summaries for one query and caller:
//! candidates are filtered and ordered in their light form
//! ([`Tagged`], [`RepoFigures`]), and only a page's summaries are built
//! from the stored facts.

use super::page::Paged;
use super::{
    Annotation, Caller, Filter, ImageSummary, ImageVulnerabilitySummary, LayerHistory,
    LayerSummary, ManifestSummary, PageInfo, PaginatedImagesResult, Platform, Referrer,
    RepoSummary, SignatureSummary, SortCriteria, Time,
};
use crate::error::MetaError;
use crate::facts::Facts;
use crate::store::Store;
use crate::store::search::{Mark, RepoFigures, Select, Shown, Tagged};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tokio::sync::OnceCell;

const COSIGN: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const NOTATION: &str = "application/vnd.cncf.notary.signature";
const VENDOR: [&str; 2] = ["org.opencontainers.image.vendor", "org.label-schema.vendor"];

/// A manifest's signatures and referrers.
type Signed = (Vec<Option<SignatureSummary>>, Vec<Option<Referrer>>);

/// Summaries for one caller, with what several of them share read once.
pub struct Summaries<'a> {
    store: &'a Store,
    caller: &'a Caller,
    figures: OnceCell<HashMap<String, RepoFigures>>,
    marks: OnceCell<(HashSet<String>, HashSet<String>)>,
}

fn count(n: u64) -> Option<i32> {
    Some(i32::try_from(n).unwrap_or(i32::MAX))
}

/// `os/arch[/variant]` as a [`Platform`].
fn platform(p: &str) -> Platform {
    let (os, arch) = p.split_once('/').unwrap_or((p, ""));
    Platform {
        os: Some(os.to_string()),
        arch: Some(arch.to_string()),
    }
}

/// Whether any of `platforms` passes the filter's Os and Arch lists (none
/// given: all pass; the values are lowercased already).
fn platform_passes(platforms: &[String], filter: &Filter) -> bool {
    let wanted = |list: &Option<Vec<Option<String>>>, v: &str| match list {
        Some(l) if !l.is_empty() => l.iter().flatten().any(|w| w.eq_ignore_ascii_case(v)),
        _ => true,
    };
    if platforms.is_empty() {
        return filter.os.as_ref().is_none_or(Vec::is_empty)
            && filter.arch.as_ref().is_none_or(Vec::is_empty);
    }
    platforms.iter().any(|p| {
        let pf = platform(p);
        wanted(&filter.os, pf.os.as_deref().unwrap_or(""))
            && wanted(&filter.arch, pf.arch.as_deref().unwrap_or(""))
    })
}

fn facts_of(shown: &Shown) -> Facts {
    shown
        .facts
        .as_deref()
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or_default()
}

fn annotations_of(shown: &Shown) -> BTreeMap<String, String> {
    serde_json::from_str(&shown.annotations).unwrap_or_default()
}

/// A stored referrer as GraphQL shows it.
pub fn referrer(r: crate::store::Referrer) -> Referrer {
    Referrer {
        media_type: Some(r.media_type),
        artifact_type: r.artifact_type,
        size: count(r.size),
        digest: Some(r.digest),
        annotations: r
            .annotations
            .into_iter()
            .map(|(k, v)| {
                Some(Annotation {
                    key: Some(k),
                    value: Some(v),
                })
            })
            .collect(),
    }
}

impl<'a> Summaries<'a> {
    pub fn new(store: &'a Store, caller: &'a Caller) -> Self {
        Self {
            store,
            caller,
            figures: OnceCell::new(),
            marks: OnceCell::new(),
        }
    }

    /// The tagged images `select` chooses in repositories the caller reads.
    pub async fn readable(&self, select: Select<'_>) -> Result<Vec<Tagged>, MetaError> {
        let mut rows = self.store.tagged(select).await?;
        rows.retain(|r| self.caller.reads(&r.repo));
        Ok(rows)
    }

    async fn figures(&self) -> Result<&HashMap<String, RepoFigures>, MetaError> {
        self.figures
            .get_or_try_init(|| async {
                Ok(self
                    .store
                    .repo_figures()
                    .await?
                    .into_iter()
                    .map(|f| (f.name.clone(), f))
                    .collect())
            })
            .await
    }

    /// The caller's starred and bookmarked repositories.
    async fn marks(&self) -> Result<&(HashSet<String>, HashSet<String>), MetaError> {
        self.marks
            .get_or_try_init(|| async {
                let user = &self.caller.username;
                if user.is_empty() {
                    return Ok((HashSet::new(), HashSet::new()));
                }
                let stars = self.store.marked(user, Mark::Star).await?;
                let bookmarks = self.store.marked(user, Mark::Bookmark).await?;
                Ok((stars.into_iter().collect(), bookmarks.into_iter().collect()))
            })
            .await
    }

    /// Repositories with at least one tag that the caller reads.
    pub async fn readable_repos(&self) -> Result<Vec<String>, MetaError> {
        Ok(self
            .figures()
            .await?
            .keys()
            .filter(|n| self.caller.reads(n))
            .cloned()
            .collect())
    }

    /// A page of `rows`, filtered and ordered, as image summaries.
    pub async fn image_page(
        &self,
        mut rows: Vec<Tagged>,
        filter: &Filter,
        page: Paged,
    ) -> async_graphql::Result<PaginatedImagesResult> {
        rows.retain(|r| {
            platform_passes(&r.platforms, filter)
                && (filter.has_to_be_signed != Some(true) || r.signed)
        });
        let by_name = |a: &Tagged, b: &Tagged| (&a.repo, &a.tag).cmp(&(&b.repo, &b.tag));
        match page.sort {
            SortCriteria::Relevance | SortCriteria::AlphabeticAsc => rows.sort_by(by_name),
            SortCriteria::AlphabeticDsc => rows.sort_by(|a, b| by_name(b, a)),
            SortCriteria::UpdateTime => {
                rows.sort_by(|a, b| b.made_at.cmp(&a.made_at).then_with(|| by_name(a, b)))
            }
            SortCriteria::Downloads => {
                rows.sort_by(|a, b| b.downloads.cmp(&a.downloads).then_with(|| by_name(a, b)))
            }
            SortCriteria::Stars | SortCriteria::Severity => return Err(page.unsupported()),
        }
        let (info, rows) = page.slice(rows);
        let mut results = Vec::with_capacity(rows.len());
        for row in &rows {
            results.push(self.image(row, Some(filter)).await.map_err(super::failed)?);
        }
        Ok(PaginatedImagesResult {
            page: Some(info),
            results,
        })
    }

    /// A page of the repositories `ranked` (name, relevance rank),
    /// filtered and ordered, as repository summaries.
    pub async fn repo_page(
        &self,
        mut ranked: Vec<(String, i32)>,
        filter: &Filter,
        page: Paged,
    ) -> async_graphql::Result<(PageInfo, Vec<RepoSummary>)> {
        let figures = self.figures().await.map_err(super::failed)?;
        let filtered = filter.os.as_ref().is_some_and(|l| !l.is_empty())
            || filter.arch.as_ref().is_some_and(|l| !l.is_empty())
            || filter.has_to_be_signed == Some(true)
            || filter.is_starred.is_some()
            || filter.is_bookmarked.is_some();
        if filtered {
            let (stars, bookmarks) = self.marks().await.map_err(super::failed)?;
            let mut by_repo: HashMap<String, Vec<Tagged>> = HashMap::new();
            for row in self
                .store
                .tagged(Select::All)
                .await
                .map_err(super::failed)?
            {
                by_repo.entry(row.repo.clone()).or_default().push(row);
            }
            ranked.retain(|(name, _)| {
                let rows = by_repo.get(name).map(Vec::as_slice).unwrap_or_default();
                let platforms: Vec<String> =
                    rows.iter().flat_map(|r| r.platforms.clone()).collect();
                let newest_signed = rows
                    .iter()
                    .max_by_key(|r| r.made_at)
                    .is_some_and(|r| r.signed);
                platform_passes(&platforms, filter)
                    && (filter.has_to_be_signed != Some(true) || newest_signed)
                    && filter.is_starred.is_none_or(|s| s == stars.contains(name))
                    && filter
                        .is_bookmarked
                        .is_none_or(|b| b == bookmarks.contains(name))
            });
        }
        let fig = |n: &str| figures.get(n);
        let made = |n: &str| fig(n).map_or(0, |f| f.made_at);
        let downloads = |n: &str| fig(n).map_or(0, |f| f.downloads);
        let stars = |n: &str| fig(n).map_or(0, |f| f.stars);
        match page.sort {
            SortCriteria::Relevance => ranked.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0))),
            SortCriteria::AlphabeticAsc => ranked.sort_by(|a, b| a.0.cmp(&b.0)),
            SortCriteria::AlphabeticDsc => ranked.sort_by(|a, b| b.0.cmp(&a.0)),
            SortCriteria::UpdateTime => {
                ranked.sort_by(|a, b| made(&b.0).cmp(&made(&a.0)).then_with(|| a.0.cmp(&b.0)))
            }
            SortCriteria::Downloads => ranked.sort_by(|a, b| {
                downloads(&b.0)
                    .cmp(&downloads(&a.0))
                    .then_with(|| a.0.cmp(&b.0))
            }),
            SortCriteria::Stars => {
                ranked.sort_by(|a, b| stars(&b.0).cmp(&stars(&a.0)).then_with(|| a.0.cmp(&b.0)))
            }
            SortCriteria::Severity => return Err(page.unsupported()),
        }
        let (info, ranked) = page.slice(ranked);
        let mut repos = Vec::with_capacity(ranked.len());
        for (name, rank) in ranked {
            let rows = self
                .store
                .tagged(Select::Repo(&name))
                .await
                .map_err(super::failed)?;
            repos.push(self.repo(&name, rows, rank).await.map_err(super::failed)?);
        }
        Ok((info, repos))
    }

    /// The summary of repository `name` from its tagged images `rows`.
    pub async fn repo(
        &self,
        name: &str,
        rows: Vec<Tagged>,
        rank: i32,
    ) -> Result<RepoSummary, MetaError> {
        let (stars, bookmarks) = self.marks().await?;
        let star_count = match self.figures().await?.get(name) {
            Some(f) => f.stars,
            None => 0,
        };
        let mut platforms = BTreeSet::new();
        let mut vendors = BTreeSet::new();
        // Each blob (and manifest) counted once, however many tags hold it.
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for row in &rows {
            platforms.extend(row.platforms.iter().cloned());
            let Some(top) = self.store.shown(name, &row.digest).await? else {
                continue;
            };
            let children = if top.facts.is_none() {
                self.store.shown_children(name, &row.digest).await?
            } else {
                Vec::new()
            };
            let vendor = {
                let a = annotations_of(&top);
                let v = VENDOR
                    .iter()
                    .filter_map(|k| a.get(*k))
                    .find(|v| !v.is_empty());
                v.cloned()
                    .or_else(|| top.facts.as_ref().map(|_| facts_of(&top).vendor))
                    .unwrap_or_default()
            };
            if !vendor.is_empty() {
                vendors.insert(vendor);
            }
            sizes.insert(top.digest.clone(), top.size);
            for m in std::iter::once(&top).chain(children.iter()) {
                sizes.insert(m.digest.clone(), m.size);
                let f = facts_of(m);
                if !f.config_digest.is_empty() {
                    sizes.insert(f.config_digest.clone(), f.config_size);
                }
                for l in f.layers {
                    sizes.insert(l.digest, l.size);
                }
            }
        }
        let newest = rows
            .iter()
            .max_by(|a, b| a.made_at.cmp(&b.made_at).then_with(|| b.tag.cmp(&a.tag)));
        let newest_image = match newest {
            Some(row) => Some(self.image(row, None).await?),
            None => None,
        };
        Ok(RepoSummary {
            name: Some(name.to_string()),
            last_updated: newest.map(|r| Time(r.made_at)),
            size: Some(sizes.values().sum::<u64>().to_string()),
            platforms: Some(platforms.iter().map(|p| Some(platform(p))).collect()),
            vendors: Some(vendors.into_iter().map(Some).collect()),
            newest_image,
            download_count: count(rows.iter().map(|r| r.downloads).sum()),
            star_count: count(star_count),
            is_bookmarked: Some(bookmarks.contains(name)),
            is_starred: Some(stars.contains(name)),
            rank: Some(rank),
        })
    }

    /// Signature tools and referrers of `digest` in `repo`; `signed`: a
    /// signature refers to it (a cosign `.sig` tag may be the only one).
    async fn signatures(
        &self,
        repo: &str,
        digest: &str,
        signed: bool,
    ) -> Result<Signed, MetaError> {
        let Ok(d) = capstan_oci::Digest::parse(digest) else {
            return Ok((Vec::new(), Vec::new()));
        };
        let found = self.store.referrers(repo, &d, None).await?;
        let mut tools = Vec::new();
        for r in &found {
            let tool = match r.artifact_type.as_deref() {
                Some(COSIGN) => "cosign",
                Some(NOTATION) => "notation",
                _ => continue,
            };
            tools.push(Some(SignatureSummary {
                tool: Some(tool.to_string()),
                is_trusted: Some(false),
                author: Some(String::new()),
            }));
        }
        if signed && tools.is_empty() {
            // Signed by a cosign tag (`sha256-<hex>.sig`) rather than a
            // referrer.
            tools.push(Some(SignatureSummary {
                tool: Some("cosign".into()),
                is_trusted: Some(false),
                author: Some(String::new()),
            }));
        }
        Ok((
            tools,
            found.into_iter().map(|r| Some(referrer(r))).collect(),
        ))
    }

    /// The summary of one image manifest; `known`: its signatures and
    /// referrers, when the caller has read them already.
    async fn manifest(
        &self,
        repo: &str,
        m: &Shown,
        known: Option<Signed>,
    ) -> Result<ManifestSummary, MetaError> {
        let f = facts_of(m);
        let (signatures, referrers) = match known {
            Some(k) => k,
            None => self.signatures(repo, &m.digest, m.signed).await?,
        };
        let layer = |l: &crate::facts::Layer| LayerSummary {
            size: Some(l.size.to_string()),
            digest: Some(l.digest.clone()),
        };
        Ok(ManifestSummary {
            digest: Some(m.digest.clone()),
            config_digest: Some(f.config_digest.clone()),
            last_updated: Some(Time(m.made_at)),
            size: Some(f.size.to_string()),
            is_signed: Some(m.signed),
            signature_info: Some(signatures),
            platform: Some(Platform {
                os: Some(f.os.clone()),
                arch: Some(f.arch.clone()),
            }),
            download_count: count(m.downloads),
            layers: Some(f.layers.iter().map(|l| Some(layer(l))).collect()),
            history: Some(
                f.history
                    .iter()
                    .map(|h| {
                        Some(LayerHistory {
                            layer: h.layer.as_ref().map(layer),
                            history_description: Some(super::HistoryDescription {
                                created: h
                                    .created
                                    .as_deref()
                                    .and_then(crate::facts::unix_seconds)
                                    .map(Time),
                                created_by: Some(h.created_by.clone()),
                                author: Some(h.author.clone()),
                                comment: Some(h.comment.clone()),
                                empty_layer: Some(h.empty_layer),
                            }),
                        })
                    })
                    .collect(),
            ),
            vulnerabilities: Some(ImageVulnerabilitySummary::default()),
            referrers: Some(referrers),
            artifact_type: m.artifact_type.clone(),
        })
    }

    /// The summary of the tagged image `row`; with a platform `filter`, an
    /// index lists only its children that pass it.
    pub async fn image(
        &self,
        row: &Tagged,
        filter: Option<&Filter>,
    ) -> Result<ImageSummary, MetaError> {
        let Some(top) = self.store.shown(&row.repo, &row.digest).await? else {
            return Ok(ImageSummary::default());
        };
        let is_index = top.facts.is_none();
        let members: Vec<Shown> = if is_index {
            let mut children = self.store.shown_children(&row.repo, &row.digest).await?;
            children.retain(|c| c.facts.is_some());
            children.sort_by(|a, b| a.digest.cmp(&b.digest));
            if let Some(filter) = filter {
                children.retain(|c| platform_passes(&c.platforms, filter));
            }
            children
        } else {
            vec![top.clone()]
        };
        let (signatures, referrers) = self.signatures(&row.repo, &row.digest, row.signed).await?;
        let mut manifests = Vec::with_capacity(members.len());
        for m in &members {
            // An image manifest is the tagged one: its signatures are read.
            let known = (!is_index).then(|| (signatures.clone(), referrers.clone()));
            manifests.push(Some(self.manifest(&row.repo, m, known).await?));
        }
        let first = members.first().map(facts_of).unwrap_or_default();
        let own = annotations_of(&top);
        // An index's annotations first, then its first child's facts; an
        // image's facts already took its annotations first.
        let pick = |keys: &[&str], fallback: &str| -> String {
            keys.iter()
                .filter_map(|k| own.get(*k))
                .find(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| fallback.to_string())
        };
        let size: u64 = if is_index {
            members.iter().map(|m| facts_of(m).size).sum()
        } else {
            first.size
        };
        Ok(ImageSummary {
            repo_name: Some(row.repo.clone()),
            tag: Some(row.tag.clone()),
            digest: Some(row.digest.clone()),
            media_type: Some(top.media_type.clone()),
            manifests: Some(manifests),
            size: Some(size.to_string()),
            download_count: count(row.downloads),
            last_pull_timestamp: row.pulled_at.map(Time),
            push_timestamp: Some(Time(row.pushed_at)),
            tagged_timestamp: Some(Time(row.tagged_at)),
            last_updated: Some(Time(row.made_at)),
            description: Some(pick(
                &[
                    "org.opencontainers.image.description",
                    "org.label-schema.description",
                ],
                &first.description,
            )),
            is_signed: Some(row.signed),
            signature_info: Some(signatures),
            licenses: Some(pick(
                &[
                    "org.opencontainers.image.licenses",
                    "org.label-schema.license",
                ],
                &first.licenses,
            )),
            labels: Some(pick(&["org.label-schema.labels"], &first.labels)),
            title: Some(pick(
                &["org.opencontainers.image.title", "org.label-schema.name"],
                &first.title,
            )),
            source: Some(pick(
                &[
                    "org.opencontainers.image.source",
                    "org.label-schema.vcs-url",
                ],
                &first.source,
            )),
            documentation: Some(pick(
                &[
                    "org.opencontainers.image.documentation",
                    "org.label-schema.usage",
                ],
                &first.documentation,
            )),
            vendor: Some(pick(&VENDOR, &first.vendor)),
            authors: Some(pick(&["org.opencontainers.image.authors"], &first.authors)),
            vulnerabilities: Some(ImageVulnerabilitySummary::default()),
            referrers: Some(referrers),
            is_deletable: None,
        })
    }

    /// The image manifests `digest` of `repo` stands for (itself, or an
    /// index's children), each with its layers.
    pub async fn layer_sets(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<Vec<(String, Vec<String>)>, MetaError> {
        let Some(top) = self.store.shown(repo, digest).await? else {
            return Ok(Vec::new());
        };
        let members = if top.facts.is_some() {
            vec![top]
        } else {
            self.store.shown_children(repo, digest).await?
        };
        Ok(members
            .iter()
            .map(|m| {
                let layers = facts_of(m).layers.into_iter().map(|l| l.digest).collect();
                (m.digest.clone(), layers)
            })
            .collect())
    }
}

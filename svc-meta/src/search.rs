//! zot's search extension as GraphQL: the schema zot's UI and `zli` query
//! (`pkg/extensions/search/schema.graphql`, same type, field and argument
//! names), answered from this service's database so that every replica
//! and every gateway answers alike right after a push. The gateway passes
//! each request through `MetaService.Search` with the caller's name and
//! access rules; results only ever hold repositories the caller may read.
//!
//! Where zot's resolvers make a choice, this one makes the same: how a
//! query string picks repositories or images, relevance of repository
//! names, sort orders, paging (including that a `limit` of 0 means all
//! only from offset 0), what is filtered and when. Deliberate differences:
//! `LastUpdated` of an image that says nothing of its creation is its first
//! push (zot: the zero time), and repository permissions are checked by
//! every query (zot: not by `Image`, `Referrers`, `DerivedImageList` and
//! `BaseImageList`). The CVE queries are absent: Capstan scans nothing.

mod page;
mod summary;
#[cfg(test)]
mod tests;

use crate::error::MetaError;
use crate::store::Store;
use crate::store::search::{Mark, Select, Tagged};
use async_graphql::{
    Context, EmptyMutation, EmptySubscription, Enum, InputObject, InputValueError,
    InputValueResult, Object, Scalar, ScalarType, SimpleObject, Value,
};
use capstan_oci::access::{Action, Scoped};
use page::{Paged, rank_repo_name};
use summary::Summaries;

/// Longest query string or filter value taken (zot's limit).
const MAX_QUERY: usize = 256;

/// The schema over a store, built once per service; cheap to clone.
#[derive(Clone)]
pub struct SearchSchema(async_graphql::Schema<Query, EmptyMutation, EmptySubscription>);

impl std::fmt::Debug for SearchSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchSchema").finish_non_exhaustive()
    }
}

/// The schema over `store`.
pub fn schema(store: Store) -> SearchSchema {
    SearchSchema(
        async_graphql::Schema::build(Query, EmptyMutation, EmptySubscription)
            .data(store)
            .finish(),
    )
}

/// Who asks: a signed-in user's name (empty when anonymous) and what they
/// may do where.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub username: String,
    pub access: Scoped,
}

impl Caller {
    fn reads(&self, repo: &str) -> bool {
        self.access.allows(repo, Action::Read)
    }
}

/// A point in time, written as RFC 3339 (gqlgen's `Time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub i64);

#[Scalar(name = "Time")]
impl ScalarType for Time {
    fn parse(_value: Value) -> InputValueResult<Self> {
        Err(InputValueError::custom("Time is only ever an answer"))
    }

    fn to_value(&self) -> Value {
        let t = time::OffsetDateTime::from_unix_timestamp(self.0)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let text = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Value::String(text)
    }
}

/// `requestedPage`.
#[derive(Debug, Clone, Copy, Default, InputObject)]
pub struct PageInput {
    pub limit: Option<i32>,
    pub offset: Option<i32>,
    pub sort_by: Option<SortCriteria>,
}

/// How results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum SortCriteria {
    Relevance,
    UpdateTime,
    AlphabeticAsc,
    AlphabeticDsc,
    Severity,
    Stars,
    Downloads,
}

/// `filter` of `GlobalSearch`.
#[derive(Debug, Clone, Default, InputObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct Filter {
    pub os: Option<Vec<Option<String>>>,
    pub arch: Option<Vec<Option<String>>>,
    pub has_to_be_signed: Option<bool>,
    pub is_bookmarked: Option<bool>,
    pub is_starred: Option<bool>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct PageInfo {
    pub total_count: i32,
    pub item_count: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct Platform {
    pub os: Option<String>,
    pub arch: Option<String>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct LayerSummary {
    pub size: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct HistoryDescription {
    pub created: Option<Time>,
    pub created_by: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
    pub empty_layer: Option<bool>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct LayerHistory {
    pub layer: Option<LayerSummary>,
    pub history_description: Option<HistoryDescription>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct Annotation {
    pub key: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct Referrer {
    pub media_type: Option<String>,
    pub artifact_type: Option<String>,
    pub size: Option<i32>,
    pub digest: Option<String>,
    pub annotations: Vec<Option<Annotation>>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct SignatureSummary {
    pub tool: Option<String>,
    pub is_trusted: Option<bool>,
    pub author: Option<String>,
}

/// Always empty: Capstan scans nothing (zot answers the same with no
/// scanner configured).
#[derive(Debug, Clone, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct ImageVulnerabilitySummary {
    pub max_severity: Option<String>,
    pub count: Option<i32>,
    pub unknown_count: Option<i32>,
    pub low_count: Option<i32>,
    pub medium_count: Option<i32>,
    pub high_count: Option<i32>,
    pub critical_count: Option<i32>,
}

impl Default for ImageVulnerabilitySummary {
    fn default() -> Self {
        Self {
            max_severity: Some(String::new()),
            count: Some(0),
            unknown_count: Some(0),
            low_count: Some(0),
            medium_count: Some(0),
            high_count: Some(0),
            critical_count: Some(0),
        }
    }
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct ManifestSummary {
    pub digest: Option<String>,
    pub config_digest: Option<String>,
    pub last_updated: Option<Time>,
    pub size: Option<String>,
    pub is_signed: Option<bool>,
    pub signature_info: Option<Vec<Option<SignatureSummary>>>,
    pub platform: Option<Platform>,
    pub download_count: Option<i32>,
    pub layers: Option<Vec<Option<LayerSummary>>>,
    pub history: Option<Vec<Option<LayerHistory>>>,
    pub vulnerabilities: Option<ImageVulnerabilitySummary>,
    pub referrers: Option<Vec<Option<Referrer>>>,
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct ImageSummary {
    pub repo_name: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    pub manifests: Option<Vec<Option<ManifestSummary>>>,
    pub size: Option<String>,
    pub download_count: Option<i32>,
    pub last_pull_timestamp: Option<Time>,
    pub push_timestamp: Option<Time>,
    pub tagged_timestamp: Option<Time>,
    pub last_updated: Option<Time>,
    pub description: Option<String>,
    pub is_signed: Option<bool>,
    pub signature_info: Option<Vec<Option<SignatureSummary>>>,
    pub licenses: Option<String>,
    pub labels: Option<String>,
    pub title: Option<String>,
    pub source: Option<String>,
    pub documentation: Option<String>,
    pub vendor: Option<String>,
    pub authors: Option<String>,
    pub vulnerabilities: Option<ImageVulnerabilitySummary>,
    pub referrers: Option<Vec<Option<Referrer>>>,
    pub is_deletable: Option<bool>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct RepoSummary {
    pub name: Option<String>,
    pub last_updated: Option<Time>,
    pub size: Option<String>,
    pub platforms: Option<Vec<Option<Platform>>>,
    pub vendors: Option<Vec<Option<String>>>,
    pub newest_image: Option<ImageSummary>,
    pub download_count: Option<i32>,
    pub star_count: Option<i32>,
    pub is_bookmarked: Option<bool>,
    pub is_starred: Option<bool>,
    pub rank: Option<i32>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct RepoInfo {
    pub images: Option<Vec<Option<ImageSummary>>>,
    pub summary: Option<RepoSummary>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct GlobalSearchResult {
    pub page: Option<PageInfo>,
    pub images: Option<Vec<Option<ImageSummary>>>,
    pub repos: Option<Vec<Option<RepoSummary>>>,
    pub layers: Option<Vec<Option<LayerSummary>>>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct PaginatedImagesResult {
    pub page: Option<PageInfo>,
    pub results: Vec<ImageSummary>,
}

#[derive(Debug, Clone, Default, SimpleObject)]
#[graphql(rename_fields = "PascalCase")]
pub struct PaginatedReposResult {
    pub page: Option<PageInfo>,
    pub results: Vec<RepoSummary>,
}

/// The root of every query.
pub struct Query;

fn store<'a>(ctx: &Context<'a>) -> &'a Store {
    ctx.data_unchecked::<Store>()
}

fn caller<'a>(ctx: &Context<'a>) -> &'a Caller {
    ctx.data_unchecked::<Caller>()
}

fn failed(e: MetaError) -> async_graphql::Error {
    tracing::warn!(error = %e, "search query failed");
    async_graphql::Error::new(e.to_string())
}

/// `repo:tag` of an `image` argument.
fn repo_and_tag(image: &str) -> async_graphql::Result<(&str, &str)> {
    match image.split_once(':') {
        Some((repo, tag)) if !tag.is_empty() => Ok((repo, tag)),
        _ => Err("no reference provided".into()),
    }
}

const NO_REPO: &str = "repo metadata not found for given repo name";

#[Object(rename_fields = "PascalCase")]
impl Query {
    async fn image_list_for_digest(
        &self,
        ctx: &Context<'_>,
        id: String,
        requested_page: Option<PageInput>,
    ) -> async_graphql::Result<PaginatedImagesResult> {
        let page = Paged::of(requested_page, SortCriteria::Relevance)?;
        let s = Summaries::new(store(ctx), caller(ctx));
        let rows = s.readable(Select::Digest(&id)).await.map_err(failed)?;
        s.image_page(rows, &Filter::default(), page).await
    }

    async fn repo_list_with_newest_image(
        &self,
        ctx: &Context<'_>,
        requested_page: Option<PageInput>,
    ) -> async_graphql::Result<PaginatedReposResult> {
        let page = Paged::of(requested_page, SortCriteria::UpdateTime)?;
        let s = Summaries::new(store(ctx), caller(ctx));
        let names = s.readable_repos().await.map_err(failed)?;
        let (info, repos) = s
            .repo_page(
                names.into_iter().map(|n| (n, 1)).collect(),
                &Filter::default(),
                page,
            )
            .await?;
        Ok(PaginatedReposResult {
            page: Some(info),
            results: repos,
        })
    }

    async fn image_list(
        &self,
        ctx: &Context<'_>,
        repo: String,
        requested_page: Option<PageInput>,
    ) -> async_graphql::Result<PaginatedImagesResult> {
        let page = Paged::of(requested_page, SortCriteria::Relevance)?;
        let s = Summaries::new(store(ctx), caller(ctx));
        let select = if repo.is_empty() {
            Select::All
        } else {
            Select::Repo(&repo)
        };
        let rows = s.readable(select).await.map_err(failed)?;
        s.image_page(rows, &Filter::default(), page).await
    }

    async fn expanded_repo_info(
        &self,
        ctx: &Context<'_>,
        repo: String,
    ) -> async_graphql::Result<RepoInfo> {
        let s = Summaries::new(store(ctx), caller(ctx));
        // Nothing, and no error, for a repository the caller may not read:
        // its existence is not told.
        if !caller(ctx).reads(&repo) {
            return Ok(RepoInfo::default());
        }
        let rows = store(ctx)
            .tagged(Select::Repo(&repo))
            .await
            .map_err(failed)?;
        if rows.is_empty() && !store(ctx).repo_exists(&repo).await.map_err(failed)? {
            return Err(NO_REPO.into());
        }
        let deletable = caller(ctx).access.allows(&repo, Action::Delete);
        let mut images = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut image = s.image(row, None).await.map_err(failed)?;
            image.is_deletable = Some(deletable);
            images.push(image);
        }
        images.sort_by(|a, b| {
            b.last_updated
                .map(|t| t.0)
                .cmp(&a.last_updated.map(|t| t.0))
        });
        let summary = s.repo(&repo, rows, 0).await.map_err(failed)?;
        Ok(RepoInfo {
            images: Some(images.into_iter().map(Some).collect()),
            summary: Some(summary),
        })
    }

    async fn global_search(
        &self,
        ctx: &Context<'_>,
        query: String,
        filter: Option<Filter>,
        requested_page: Option<PageInput>,
    ) -> async_graphql::Result<GlobalSearchResult> {
        if query.len() > MAX_QUERY {
            return Err(format!(
                "max string size limit exceeded for query parameter. max={MAX_QUERY} current={} \
                 request parameter has invalid value",
                query.len()
            )
            .into());
        }
        let filter = clean_filter(filter.unwrap_or_default())?;
        let page = Paged::of(requested_page, SortCriteria::Relevance)?;
        let s = Summaries::new(store(ctx), caller(ctx));
        let q = query.trim().trim_matches('/').to_lowercase();
        let rows = if !q.contains(':') && !q.contains('@') {
            // Repositories by name.
            let names = s.readable_repos().await.map_err(failed)?;
            let ranked = names
                .into_iter()
                .filter_map(|n| {
                    let r = rank_repo_name(&q, &n);
                    (r >= 0).then_some((n, r))
                })
                .collect();
            let (info, repos) = s.repo_page(ranked, &filter, page).await?;
            return Ok(GlobalSearchResult {
                page: Some(info),
                images: Some(Vec::new()),
                repos: Some(repos.into_iter().map(Some).collect()),
                layers: Some(Vec::new()),
            });
        } else if q.starts_with("sha256:") {
            s.readable(Select::Digest(&q)).await
        } else {
            match q.split_once(':') {
                Some((repo, tag)) if !repo.is_empty() => {
                    if tag.contains(':') {
                        return Err("failed to parse search text, invalid format invalid image \
                                    reference format, use [repo:tag] or [repo@digest]"
                            .into());
                    }
                    s.readable(Select::TagPrefix { repo, prefix: tag }).await
                }
                Some(("", tag)) if !tag.is_empty() => s.readable(Select::TagContains(tag)).await,
                _ => return Err("invalid search query".into()),
            }
        }
        .map_err(failed)?;
        let images = s.image_page(rows, &filter, page).await?;
        Ok(GlobalSearchResult {
            page: images.page,
            images: Some(images.results.into_iter().map(Some).collect()),
            repos: None,
            layers: Some(Vec::new()),
        })
    }

    async fn derived_image_list(
        &self,
        ctx: &Context<'_>,
        image: String,
        digest: Option<String>,
        requested_page: Option<PageInput>,
    ) -> async_graphql::Result<PaginatedImagesResult> {
        related(ctx, &image, digest.as_deref(), requested_page, true).await
    }

    async fn base_image_list(
        &self,
        ctx: &Context<'_>,
        image: String,
        digest: Option<String>,
        requested_page: Option<PageInput>,
    ) -> async_graphql::Result<PaginatedImagesResult> {
        related(ctx, &image, digest.as_deref(), requested_page, false).await
    }

    async fn image(&self, ctx: &Context<'_>, image: String) -> async_graphql::Result<ImageSummary> {
        let (repo, tag) = repo_and_tag(&image)?;
        if !caller(ctx).reads(repo) {
            return Err(NO_REPO.into());
        }
        let s = Summaries::new(store(ctx), caller(ctx));
        let rows = store(ctx)
            .tagged(Select::TagPrefix { repo, prefix: tag })
            .await
            .map_err(failed)?;
        match rows.iter().find(|r| r.tag == tag) {
            Some(row) => s.image(row, None).await.map_err(failed),
            None if rows.is_empty() && !store(ctx).repo_exists(repo).await.map_err(failed)? => {
                Err(NO_REPO.into())
            }
            None => Err(format!("can't find image: {repo}:{tag}").into()),
        }
    }

    async fn referrers(
        &self,
        ctx: &Context<'_>,
        repo: String,
        digest: String,
        #[graphql(name = "type")] types: Option<Vec<String>>,
    ) -> async_graphql::Result<Vec<Option<Referrer>>> {
        let d = capstan_oci::Digest::parse(&digest)
            .map_err(|e| format!("bad digest string from request '{digest}' {e}"))?;
        if !caller(ctx).reads(&repo) || !store(ctx).repo_exists(&repo).await.map_err(failed)? {
            return Err(NO_REPO.into());
        }
        let types = types.unwrap_or_default();
        let all = types.is_empty() || types.iter().any(String::is_empty);
        let found = store(ctx)
            .referrers(&repo, &d, None)
            .await
            .map_err(failed)?;
        Ok(found
            .into_iter()
            .filter(|r| all || r.artifact_type.as_ref().is_some_and(|t| types.contains(t)))
            .map(|r| Some(summary::referrer(r)))
            .collect())
    }

    async fn starred_repos(
        &self,
        ctx: &Context<'_>,
        requested_page: Option<PageInput>,
    ) -> async_graphql::Result<PaginatedReposResult> {
        marked(ctx, Mark::Star, requested_page).await
    }

    async fn bookmarked_repos(
        &self,
        ctx: &Context<'_>,
        requested_page: Option<PageInput>,
    ) -> async_graphql::Result<PaginatedReposResult> {
        marked(ctx, Mark::Bookmark, requested_page).await
    }
}

/// `StarredRepos` and `BookmarkedRepos`: the caller's marked repositories
/// they may read (none when anonymous).
async fn marked(
    ctx: &Context<'_>,
    mark: Mark,
    requested_page: Option<PageInput>,
) -> async_graphql::Result<PaginatedReposResult> {
    let page = Paged::of(requested_page, SortCriteria::UpdateTime)?;
    let who = caller(ctx);
    let names = if who.username.is_empty() {
        Vec::new()
    } else {
        store(ctx)
            .marked(&who.username, mark)
            .await
            .map_err(failed)?
    };
    let names = names.into_iter().filter(|n| who.reads(n)).map(|n| (n, 1));
    let s = Summaries::new(store(ctx), who);
    let (info, repos) = s
        .repo_page(names.collect(), &Filter::default(), page)
        .await?;
    Ok(PaginatedReposResult {
        page: Some(info),
        results: repos,
    })
}

/// `DerivedImageList` (`derived`) and `BaseImageList`: tagged images whose
/// layers hold all of the image's (derived), or all of whose layers the
/// image holds (base).
async fn related(
    ctx: &Context<'_>,
    image: &str,
    digest: Option<&str>,
    requested_page: Option<PageInput>,
    derived: bool,
) -> async_graphql::Result<PaginatedImagesResult> {
    let page = Paged::of(requested_page, SortCriteria::UpdateTime)?;
    let (repo, tag) = repo_and_tag(image)?;
    let who = caller(ctx);
    let s = Summaries::new(store(ctx), who);
    if !who.reads(repo) || !store(ctx).repo_exists(repo).await.map_err(failed)? {
        return Err("repository not found".into());
    }
    let reference_digest = match digest {
        Some(d) => d.to_string(),
        None => {
            let rows = store(ctx)
                .tagged(Select::TagPrefix { repo, prefix: tag })
                .await
                .map_err(failed)?;
            match rows.into_iter().find(|r| r.tag == tag) {
                Some(r) => r.digest,
                None => return Err(format!("can't find image: {repo}:{tag}").into()),
            }
        }
    };
    let references = s
        .layer_sets(repo, &reference_digest)
        .await
        .map_err(failed)?;
    let mut chosen: Vec<Tagged> = Vec::new();
    for row in s.readable(Select::All).await.map_err(failed)? {
        let sets = s.layer_sets(&row.repo, &row.digest).await.map_err(failed)?;
        let related = sets.iter().any(|(digest, layers)| {
            references.iter().any(|(ref_digest, ref_layers)| {
                digest != ref_digest
                    && !layers.is_empty()
                    && if derived {
                        ref_layers.iter().all(|l| layers.contains(l))
                    } else {
                        layers.iter().all(|l| ref_layers.contains(l))
                    }
            })
        });
        let same = sets
            .iter()
            .any(|(d, _)| references.iter().any(|(r, _)| r == d));
        if related && !same {
            chosen.push(row);
        }
    }
    s.image_page(chosen, &Filter::default(), page).await
}

/// `filter` with its platform names lowercased and trimmed, empty ones
/// dropped, each at most [`MAX_QUERY`] long.
fn clean_filter(mut filter: Filter) -> async_graphql::Result<Filter> {
    for list in [&mut filter.os, &mut filter.arch] {
        if let Some(values) = list.take() {
            let mut kept = Vec::new();
            for v in values.into_iter().flatten() {
                if v.len() > MAX_QUERY {
                    return Err(format!(
                        "max string size limit exceeded for filter parameter. max={MAX_QUERY} \
                         current={} request parameter has invalid value",
                        v.len()
                    )
                    .into());
                }
                let v = v.trim().to_lowercase();
                if !v.is_empty() {
                    kept.push(Some(v));
                }
            }
            *list = Some(kept);
        }
    }
    Ok(filter)
}

/// `query` with `__schema()` written `__schema`: zli's introspection query
/// has the empty parentheses, which Go's GraphQL parser takes and the
/// grammar (and async-graphql) does not.
fn zli_compatible(query: &str) -> std::borrow::Cow<'_, str> {
    static EMPTY_ARGS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\b(__schema|__type)\s*\(\s*\)").expect("a valid pattern")
    });
    EMPTY_ARGS.replace_all(query, "$1")
}

/// Runs one GraphQL request (`query`, `variables` as a JSON object or
/// empty, `operation_name` or empty) for `caller`; the response as JSON.
pub async fn execute(
    schema: &SearchSchema,
    query: &str,
    variables: &str,
    operation_name: &str,
    caller: Caller,
) -> Vec<u8> {
    let query = zli_compatible(query);
    let mut request = async_graphql::Request::new(query.as_ref()).data(caller);
    if !operation_name.is_empty() {
        request = request.operation_name(operation_name);
    }
    if !variables.trim().is_empty() {
        match serde_json::from_str::<serde_json::Value>(variables) {
            Ok(v) => request = request.variables(async_graphql::Variables::from_json(v)),
            Err(e) => {
                let r =
                    async_graphql::Response::from_errors(vec![async_graphql::ServerError::new(
                        format!("variables are not JSON: {e}"),
                        None,
                    )]);
                return serde_json::to_vec(&r).unwrap_or_default();
            }
        }
    }
    let response = schema.0.execute(request).await;
    serde_json::to_vec(&response).unwrap_or_default()
}

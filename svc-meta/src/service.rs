//! The gRPC face of the [`Store`]: request fields are parsed into typed
//! values here, and every failure leaves through `MetaError → Status`.

use crate::error::MetaError;
use crate::store::{Push, Store};
use capstan_proto::meta::v1::TagRule;
use capstan_proto::meta::v1::meta_service_server::{MetaService, MetaServiceServer};
use capstan_proto::meta::v1::{
    ApplyRetentionRequest, ApplyRetentionResponse, CollectGarbageRequest, CollectGarbageResponse,
    CollectedLink, ForgetBlobRequest, ForgetBlobResponse, ForgetGarbageRequest,
    ForgetGarbageResponse, GarbageEntry, RecordPullsRequest, RecordPullsResponse, RetainedEntry,
    SearchRequest, SearchResponse, ToggleMarkRequest, ToggleMarkResponse, UnreferencedRequest,
    UnreferencedResponse,
};
use capstan_proto::meta::v1::{
    CatalogRequest, CatalogResponse, Change, DeleteManifestRequest, DeleteManifestResponse,
    Descriptor, GetManifestRequest, GetManifestResponse, LinkBlobRequest, LinkBlobResponse,
    ListTagsRequest, ListTagsResponse, MountBlobRequest, MountBlobResponse, PutManifestRequest,
    PutManifestResponse, ReferrersRequest, ReferrersResponse, StatBlobRequest, StatBlobResponse,
    UnlinkBlobRequest, UnlinkBlobResponse, WatchRequest,
};
use capstan_runtime::Shutdown;
use capstan_runtime::grpc::MAX_MESSAGE_BYTES;
use std::future::Future;
use tokio::sync::broadcast;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The MetaService implementation over a [`Store`].
#[derive(Debug, Clone)]
pub struct MetaGrpc {
    store: Store,
    /// zot's search, over `store`.
    search: crate::search::SearchSchema,
    /// `storage.retention`, when garbage collection is on.
    retention: Option<std::sync::Arc<crate::retention::Retentions>>,
    /// Ends `Watch` streams so a graceful stop is not held up by them.
    shutdown: Shutdown,
}

impl MetaGrpc {
    pub fn new(store: Store, shutdown: Shutdown) -> Self {
        Self {
            search: crate::search::schema(store.clone()),
            store,
            retention: None,
            shutdown,
        }
    }

    /// Apply `retention` when asked (`ApplyRetention`).
    pub fn with_retention(mut self, retention: crate::retention::Retentions) -> Self {
        self.retention = Some(std::sync::Arc::new(retention));
        self
    }
}

/// The generated server for `store`, with Capstan's message size limits.
pub fn grpc_service(store: Store, shutdown: Shutdown) -> MetaServiceServer<MetaGrpc> {
    serve_grpc(MetaGrpc::new(store, shutdown))
}

/// The generated server for `grpc`, with Capstan's message size limits.
pub fn serve_grpc(grpc: MetaGrpc) -> MetaServiceServer<MetaGrpc> {
    MetaServiceServer::new(grpc)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Run one call, converting its error at the boundary. The span with the
/// method and trace id comes from the server scaffold (`runtime::grpc`).
async fn call<T, R>(
    rpc: &'static str,
    _req: &Request<T>,
    body: impl Future<Output = Result<R, MetaError>>,
) -> Result<Response<R>, Status> {
    match body.await {
        Ok(r) => Ok(Response::new(r)),
        Err(e) => {
            tracing::debug!(rpc, error = %e, "call failed");
            Err(Status::from(e))
        }
    }
}

#[tonic::async_trait]
impl MetaService for MetaGrpc {
    async fn put_manifest(
        &self,
        request: Request<PutManifestRequest>,
    ) -> Result<Response<PutManifestResponse>, Status> {
        call("put_manifest", &request, async {
            let r = request.get_ref();
            let reference = MetaError::reference(&r.reference)?;
            let out = self
                .store
                .put_manifest_sparse(
                    &r.repo,
                    &reference,
                    Push {
                        tags: &r.tags,
                        rule: match r.tag_rule() {
                            TagRule::Any => crate::store::TagRule::Any,
                            TagRule::NewOnly => crate::store::TagRule::NewOnly,
                            TagRule::ExistingOnly => crate::store::TagRule::ExistingOnly,
                        },
                        config: (!r.config.is_empty()).then_some(&r.config[..]),
                    },
                    &r.content_type,
                    &r.content,
                    r.allow_missing_children,
                )
                .await?;
            Ok(PutManifestResponse {
                digest: out.digest.to_string(),
                subject: out.subject.map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .await
    }

    async fn get_manifest(
        &self,
        request: Request<GetManifestRequest>,
    ) -> Result<Response<GetManifestResponse>, Status> {
        call("get_manifest", &request, async {
            let r = request.get_ref();
            let reference = MetaError::reference(&r.reference)?;
            let m = self.store.get_manifest(&r.repo, &reference, r.head).await?;
            Ok(GetManifestResponse {
                digest: m.digest,
                media_type: m.media_type,
                size: m.size,
                content: m.content.map(Into::into).unwrap_or_default(),
            })
        })
        .await
    }

    async fn delete_manifest(
        &self,
        request: Request<DeleteManifestRequest>,
    ) -> Result<Response<DeleteManifestResponse>, Status> {
        call("delete_manifest", &request, async {
            let r = request.get_ref();
            let reference = MetaError::reference(&r.reference)?;
            self.store
                .delete_manifest(&r.repo, &reference, r.detect_collision)
                .await?;
            Ok(DeleteManifestResponse {})
        })
        .await
    }

    async fn list_tags(
        &self,
        request: Request<ListTagsRequest>,
    ) -> Result<Response<ListTagsResponse>, Status> {
        call("list_tags", &request, async {
            let r = request.get_ref();
            let page = self.store.list_tags(&r.repo, r.n, &r.last).await?;
            Ok(ListTagsResponse {
                tags: page.items,
                more: page.more,
            })
        })
        .await
    }

    async fn catalog(
        &self,
        request: Request<CatalogRequest>,
    ) -> Result<Response<CatalogResponse>, Status> {
        call("catalog", &request, async {
            let r = request.get_ref();
            let page = self.store.catalog(r.n, &r.last).await?;
            Ok(CatalogResponse {
                repositories: page.items,
                more: page.more,
            })
        })
        .await
    }

    async fn referrers(
        &self,
        request: Request<ReferrersRequest>,
    ) -> Result<Response<ReferrersResponse>, Status> {
        call("referrers", &request, async {
            let r = request.get_ref();
            let subject = MetaError::digest(&r.digest)?;
            let filter = (!r.artifact_type.is_empty()).then_some(r.artifact_type.as_str());
            let found = self.store.referrers(&r.repo, &subject, filter).await?;
            Ok(ReferrersResponse {
                manifests: found
                    .into_iter()
                    .map(|m| Descriptor {
                        media_type: m.media_type,
                        digest: m.digest,
                        size: m.size,
                        artifact_type: m.artifact_type.unwrap_or_default(),
                        annotations: m.annotations.into_iter().collect(),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn link_blob(
        &self,
        request: Request<LinkBlobRequest>,
    ) -> Result<Response<LinkBlobResponse>, Status> {
        call("link_blob", &request, async {
            let r = request.get_ref();
            let digest = MetaError::digest(&r.digest)?;
            self.store.link_blob(&r.repo, &digest, r.size).await?;
            Ok(LinkBlobResponse {})
        })
        .await
    }

    async fn stat_blob(
        &self,
        request: Request<StatBlobRequest>,
    ) -> Result<Response<StatBlobResponse>, Status> {
        call("stat_blob", &request, async {
            let r = request.get_ref();
            let digest = MetaError::digest(&r.digest)?;
            let size = self.store.stat_blob(&r.repo, &digest).await?;
            Ok(StatBlobResponse { size })
        })
        .await
    }

    async fn unlink_blob(
        &self,
        request: Request<UnlinkBlobRequest>,
    ) -> Result<Response<UnlinkBlobResponse>, Status> {
        call("unlink_blob", &request, async {
            let r = request.get_ref();
            let digest = MetaError::digest(&r.digest)?;
            self.store.unlink_blob(&r.repo, &digest).await?;
            Ok(UnlinkBlobResponse {})
        })
        .await
    }

    async fn mount_blob(
        &self,
        request: Request<MountBlobRequest>,
    ) -> Result<Response<MountBlobResponse>, Status> {
        call("mount_blob", &request, async {
            let r = request.get_ref();
            let digest = MetaError::digest(&r.digest)?;
            let size = self.store.mount_blob(&r.repo, &r.from, &digest).await?;
            Ok(MountBlobResponse {
                mounted: size.is_some(),
                size: size.unwrap_or(0),
            })
        })
        .await
    }

    async fn collect_garbage(
        &self,
        request: Request<CollectGarbageRequest>,
    ) -> Result<Response<CollectGarbageResponse>, Status> {
        call("collect_garbage", &request, async {
            let r = request.get_ref();
            let c = self.store.collect(r.cutoff, r.limit, r.dry_run).await?;
            Ok(CollectGarbageResponse {
                links: c
                    .links
                    .into_iter()
                    .map(|l| CollectedLink {
                        repo: l.repo,
                        digest: l.digest,
                        size: l.size,
                    })
                    .collect(),
                garbage: c
                    .garbage
                    .into_iter()
                    .map(|g| GarbageEntry {
                        digest: g.digest,
                        since: g.since,
                    })
                    .collect(),
                more: c.more,
            })
        })
        .await
    }

    async fn forget_garbage(
        &self,
        request: Request<ForgetGarbageRequest>,
    ) -> Result<Response<ForgetGarbageResponse>, Status> {
        call("forget_garbage", &request, async {
            let entries: Vec<crate::Garbage> = request
                .get_ref()
                .garbage
                .iter()
                .map(|g| crate::Garbage {
                    digest: g.digest.clone(),
                    since: g.since,
                })
                .collect();
            self.store.forget_garbage(&entries).await?;
            Ok(ForgetGarbageResponse {})
        })
        .await
    }

    async fn unreferenced(
        &self,
        request: Request<UnreferencedRequest>,
    ) -> Result<Response<UnreferencedResponse>, Status> {
        call("unreferenced", &request, async {
            let digests = request
                .get_ref()
                .digests
                .iter()
                .map(|d| MetaError::digest(d))
                .collect::<Result<Vec<_>, _>>()?;
            let unused = self.store.unreferenced(&digests).await?;
            Ok(UnreferencedResponse {
                digests: unused.iter().map(ToString::to_string).collect(),
            })
        })
        .await
    }

    async fn apply_retention(
        &self,
        request: Request<ApplyRetentionRequest>,
    ) -> Result<Response<ApplyRetentionResponse>, Status> {
        call("apply_retention", &request, async {
            let Some(retention) = &self.retention else {
                return Ok(ApplyRetentionResponse::default());
            };
            let asked_dry = request.get_ref().dry_run;
            let dry_run = asked_dry || retention.all_dry_run();
            let removed = self.store.apply_retention(retention, asked_dry).await?;
            Ok(ApplyRetentionResponse {
                dry_run,
                removed: removed
                    .into_iter()
                    .map(|r| RetainedEntry {
                        repo: r.repo,
                        digest: r.digest,
                        tag: r.tag.unwrap_or_default(),
                        reason: r.reason.to_string(),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn forget_blob(
        &self,
        request: Request<ForgetBlobRequest>,
    ) -> Result<Response<ForgetBlobResponse>, Status> {
        call("forget_blob", &request, async {
            let digest = MetaError::digest(&request.get_ref().digest)?;
            let links = self.store.forget_blob(&digest).await?;
            Ok(ForgetBlobResponse { links })
        })
        .await
    }

    async fn record_pulls(
        &self,
        request: Request<RecordPullsRequest>,
    ) -> Result<Response<RecordPullsResponse>, Status> {
        call("record_pulls", &request, async {
            let pulls: Vec<(String, String, u64, i64)> = request
                .get_ref()
                .pulls
                .iter()
                .map(|p| (p.repo.clone(), p.digest.clone(), p.count, p.last))
                .collect();
            self.store.record_pulls(&pulls).await?;
            Ok(RecordPullsResponse {})
        })
        .await
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        call("search", &request, async {
            let r = request.get_ref();
            let access = r
                .grant
                .clone()
                .unwrap_or_default()
                .to_scoped()
                .map_err(|e| MetaError::Unsupported(format!("the caller's grant: {e}")))?;
            let caller = crate::search::Caller {
                username: r.username.clone(),
                access,
            };
            let json = crate::search::execute(
                &self.search,
                &r.query,
                &r.variables,
                &r.operation_name,
                caller,
            )
            .await;
            Ok(SearchResponse { json })
        })
        .await
    }

    async fn toggle_mark(
        &self,
        request: Request<ToggleMarkRequest>,
    ) -> Result<Response<ToggleMarkResponse>, Status> {
        call("toggle_mark", &request, async {
            let r = request.get_ref();
            let mark = match r.kind.as_str() {
                "star" => crate::store::search::Mark::Star,
                "bookmark" => crate::store::search::Mark::Bookmark,
                other => return Err(MetaError::Unsupported(format!("no mark {other:?}"))),
            };
            if r.username.is_empty() {
                return Err(MetaError::Unsupported(
                    "only a signed-in user marks repositories".into(),
                ));
            }
            let marked = self.store.toggle_mark(&r.username, mark, &r.repo).await?;
            Ok(ToggleMarkResponse { marked })
        })
        .await
    }

    type WatchStream = ReceiverStream<Result<Change, Status>>;

    async fn watch(
        &self,
        _request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Subscribe before answering, so nothing committed after the answer
        // can be missed.
        let mut rx = self.store.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut next = Some(String::new());
            loop {
                let repo = match next.take() {
                    Some(r) => r,
                    None => tokio::select! {
                        _ = shutdown.wait() => return,
                        got = rx.recv() => match got {
                            Ok(r) => r,
                            // Fell behind: the subscriber must drop everything.
                            Err(broadcast::error::RecvError::Lagged(_)) => String::new(),
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                    },
                };
                if tx.send(Ok(Change { repo })).await.is_err() {
                    return; // subscriber gone
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

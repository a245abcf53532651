//! `/v2/...` paths parsed into a typed [`Endpoint`].
//!
//! Repository names contain `/`, so a path is matched from its end: the last
//! segments decide the endpoint and everything before them is the name.

use capstan_oci::validate_repository;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { repo: String },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { repo: String, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { repo: String, digest: String },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { repo: String },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { repo: String, id: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { repo: String, digest: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no such endpoint")]
    NotFound,
    #[error("invalid repository name")]
    NameInvalid,
}

impl Endpoint {
    /// Stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags { .. } => "tags",
            Endpoint::Manifest { .. } => "manifest",
            Endpoint::Blob { .. } => "blob",
            Endpoint::UploadStart { .. } => "upload_start",
            Endpoint::Upload { .. } => "upload",
            Endpoint::Referrers { .. } => "referrers",
        }
    }

    pub fn repo(&self) -> Option<&str> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags { repo }
            | Endpoint::Manifest { repo, .. }
            | Endpoint::Blob { repo, .. }
            | Endpoint::UploadStart { repo }
            | Endpoint::Upload { repo, .. }
            | Endpoint::Referrers { repo, .. } => Some(repo),
        }
    }

    /// HTTP methods the endpoint answers (HEAD included where GET is).
    pub fn allows(&self, method: &str) -> bool {
        let allowed: &[&str] = match self {
            Endpoint::Base => &["GET", "HEAD"],
            Endpoint::Catalog | Endpoint::Tags { .. } | Endpoint::Referrers { .. } => {
                &["GET", "HEAD"]
            }
            Endpoint::Manifest { .. } => &["GET", "HEAD", "PUT", "DELETE"],
            Endpoint::Blob { .. } => &["GET", "HEAD", "DELETE"],
            Endpoint::UploadStart { .. } => &["POST"],
            Endpoint::Upload { .. } => &["GET", "PATCH", "PUT", "DELETE"],
        };
        allowed.contains(&method)
    }
}

/// Parse the path part of a request URI (percent-encoded, no query).
pub fn parse(raw_path: &str) -> Result<Endpoint, RouteError> {
    let decoded = percent_encoding::percent_decode_str(raw_path)
        .decode_utf8()
        .map_err(|_| RouteError::NotFound)?;
    let rest = decoded.strip_prefix("/v2").ok_or(RouteError::NotFound)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Endpoint::Base);
    }
    let rest = rest.strip_prefix('/').ok_or(RouteError::NotFound)?;
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<String, RouteError> {
        if k == 0 {
            return Err(RouteError::NotFound);
        }
        let repo = segs[..k].join("/");
        validate_repository(&repo).map_err(|_| RouteError::NameInvalid)?;
        Ok(repo)
    };
    // `<name>/blobs/uploads/` and `<name>/blobs/uploads/<id>`.
    if n >= 3 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let repo = name(n - 3)?;
        return Ok(if segs[n - 1].is_empty() {
            Endpoint::UploadStart { repo }
        } else {
            Endpoint::Upload {
                repo,
                id: segs[n - 1].to_string(),
            }
        });
    }
    if n >= 2 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Ok(Endpoint::UploadStart { repo: name(n - 2)? });
    }
    if n >= 2 && !segs[n - 1].is_empty() {
        let last = segs[n - 1].to_string();
        match segs[n - 2] {
            "tags" if last == "list" => return Ok(Endpoint::Tags { repo: name(n - 2)? }),
            "manifests" => {
                return Ok(Endpoint::Manifest {
                    repo: name(n - 2)?,
                    reference: last,
                });
            }
            "blobs" => {
                return Ok(Endpoint::Blob {
                    repo: name(n - 2)?,
                    digest: last,
                });
            }
            "referrers" => {
                return Ok(Endpoint::Referrers {
                    repo: name(n - 2)?,
                    digest: last,
                });
            }
            _ => {}
        }
    }
    Err(RouteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn repo(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn base_and_catalog() {
        assert_eq!(parse("/v2/"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Endpoint::Catalog));
        assert_eq!(parse("/v1/"), Err(RouteError::NotFound));
        assert_eq!(parse("/"), Err(RouteError::NotFound));
    }

    #[test]
    fn nested_names_are_matched_from_the_end() {
        assert_eq!(
            parse("/v2/a/b/c/manifests/latest"),
            Ok(Endpoint::Manifest {
                repo: repo("a/b/c"),
                reference: "latest".into()
            })
        );
        assert_eq!(
            parse(&format!("/v2/x/blobs/{D}")),
            Ok(Endpoint::Blob {
                repo: repo("x"),
                digest: D.into()
            })
        );
        // A repository may itself be called `blobs` or `manifests`.
        assert_eq!(
            parse(&format!("/v2/blobs/manifests/blobs/{D}")),
            Ok(Endpoint::Blob {
                repo: repo("blobs/manifests"),
                digest: D.into()
            })
        );
        assert_eq!(
            parse("/v2/org/tags/tags/list"),
            Ok(Endpoint::Tags {
                repo: repo("org/tags")
            })
        );
        assert_eq!(
            parse(&format!("/v2/r/referrers/{D}")),
            Ok(Endpoint::Referrers {
                repo: repo("r"),
                digest: D.into()
            })
        );
    }

    #[test]
    fn uploads() {
        assert_eq!(
            parse("/v2/a/b/blobs/uploads/"),
            Ok(Endpoint::UploadStart { repo: repo("a/b") })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads"),
            Ok(Endpoint::UploadStart { repo: repo("a") })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/0f1e"),
            Ok(Endpoint::Upload {
                repo: repo("a"),
                id: "0f1e".into()
            })
        );
    }

    #[test]
    fn percent_encoded_digests_are_decoded() {
        assert_eq!(
            parse(&format!("/v2/x/manifests/{}", D.replace(':', "%3A"))),
            Ok(Endpoint::Manifest {
                repo: repo("x"),
                reference: D.into()
            })
        );
    }

    #[test]
    fn bad_names_and_unknown_paths() {
        assert_eq!(parse("/v2/UPPER/tags/list"), Err(RouteError::NameInvalid));
        assert_eq!(parse("/v2/a/../b/tags/list"), Err(RouteError::NameInvalid));
        assert_eq!(
            parse("/v2/a/%2e%2e/tags/list"),
            Err(RouteError::NameInvalid)
        );
        assert_eq!(parse("/v2/a//b/manifests/x"), Err(RouteError::NameInvalid));
        assert_eq!(parse("/v2/manifests/x"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a/whatever"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a/manifests/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a/%ff/tags/list"), Err(RouteError::NotFound));
    }

    #[test]
    fn methods() {
        let m = parse("/v2/a/manifests/t").unwrap();
        assert!(m.allows("PUT") && m.allows("HEAD") && !m.allows("POST"));
        let u = parse("/v2/a/blobs/uploads/").unwrap();
        assert!(u.allows("POST") && !u.allows("GET"));
        assert_eq!(m.name(), "manifest");
        assert_eq!(m.repo(), Some("a"));
    }
}

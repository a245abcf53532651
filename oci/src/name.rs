//! The distribution spec's grammar for repository names and tags, and the
//! `<reference>` of a manifest URL (a tag or a digest).

use crate::digest::{Digest, DigestError};

/// Longest repository name accepted (the spec's hint for path limits).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag (the spec's grammar allows 128 characters).
pub const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "repository name must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*"
    )]
    BadRepository,
    #[error("repository name longer than {MAX_NAME_LEN} characters")]
    RepositoryTooLong,
    #[error("tag must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    BadTag,
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// Validate one path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

pub fn validate_repository(name: &str) -> Result<(), NameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::RepositoryTooLong);
    }
    if name.split('/').all(valid_component) {
        Ok(())
    } else {
        Err(NameError::BadRepository)
    }
}

pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    let b = tag.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|x| x.is_ascii_alphanumeric() || *x == b'_');
    let rest_ok = b
        .iter()
        .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && b.len() <= MAX_TAG_LEN {
        Ok(())
    } else {
        Err(NameError::BadTag)
    }
}

/// The `<reference>` of `/v2/<name>/manifests/<reference>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    /// A reference containing `:` is a digest, anything else a tag.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.contains(':') {
            Ok(Reference::Digest(Digest::parse(s)?))
        } else {
            validate_tag(s)?;
            Ok(Reference::Tag(s.to_string()))
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_repository_names() {
        for ok in [
            "a",
            "library/ubuntu",
            "a/b/c/d",
            "foo.bar",
            "foo_bar",
            "foo__bar",
            "foo-bar",
            "foo---bar",
            "0abc/x9",
        ] {
            assert_eq!(validate_repository(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_repository_names() {
        for bad in [
            "",
            "A",
            "foo/",
            "/foo",
            "foo//bar",
            "foo/../bar",
            "..",
            ".foo",
            "foo.",
            "foo___bar",
            "foo..bar",
            "foo._bar",
            "foo bar",
            "foo%2fbar",
            "-foo",
        ] {
            assert!(validate_repository(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            validate_repository(&"a".repeat(256)),
            Err(NameError::RepositoryTooLong)
        );
    }

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "v1.0.0", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert_eq!(validate_tag(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"t".repeat(129), "a b"] {
            assert!(validate_tag(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn reference_is_tag_or_digest() {
        assert_eq!(Reference::parse("v1"), Ok(Reference::Tag("v1".into())));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(Reference::parse(d), Ok(Reference::Digest(_))));
        assert!(Reference::parse("sha256:nothex").is_err());
        assert!(Reference::parse("..").is_err());
    }
}

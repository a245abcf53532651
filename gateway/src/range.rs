//! `Range` (blob reads) and `Content-Range` (chunked uploads) headers.

/// An inclusive byte range within a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    /// Number of bytes covered (never zero: the range is inclusive).
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The outcome of a `Range` header against a blob of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No usable range: send the whole blob with 200.
    Full,
    /// Send this part with 206.
    Partial(Span),
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Interpret a `Range` request header. Only single `bytes=` ranges are
/// served partially; another unit is ignored (whole body), several ranges or
/// a malformed or unsatisfiable `bytes=` range are answered with 416.
pub fn parse_range(header: &str, size: u64) -> RangeOutcome {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeOutcome::Full;
    };
    if spec.contains(',') {
        return RangeOutcome::Unsatisfiable;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeOutcome::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (a, b) = (a.trim(), b.trim());
    let span = if a.is_empty() {
        // Suffix range: the last `b` bytes.
        match num(b) {
            Some(0) | None => return RangeOutcome::Unsatisfiable,
            Some(_) if size == 0 => return RangeOutcome::Unsatisfiable,
            Some(n) => Span {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        }
    } else {
        let Some(start) = num(a) else {
            return RangeOutcome::Unsatisfiable;
        };
        if start >= size {
            return RangeOutcome::Unsatisfiable;
        }
        let end = if b.is_empty() {
            size - 1
        } else {
            match num(b) {
                Some(e) if e >= start => e.min(size - 1),
                _ => return RangeOutcome::Unsatisfiable,
            }
        };
        Span { start, end }
    };
    RangeOutcome::Partial(span)
}

/// Parse a chunk's `Content-Range`: `start-end`, also `bytes start-end/total`
/// and `bytes=start-end`. `None` when malformed.
pub fn parse_content_range(header: &str) -> Option<Span> {
    let h = header.trim();
    let h = h
        .strip_prefix("bytes=")
        .or_else(|| h.strip_prefix("bytes "))
        .unwrap_or(h);
    let h = h.split('/').next()?;
    let (a, b) = h.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = b.trim().parse().ok()?;
    (end >= start).then_some(Span { start, end })
}

/// The `Range` header of an upload holding `offset` bytes (`0-<last byte>`;
/// `0-0` before any byte, as distribution answers).
pub fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(
            parse_range("bytes=0-9", 100),
            RangeOutcome::Partial(Span { start: 0, end: 9 })
        );
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeOutcome::Partial(Span { start: 90, end: 99 })
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeOutcome::Partial(Span { start: 90, end: 99 })
        );
        assert_eq!(
            parse_range("bytes=-1000", 100),
            RangeOutcome::Partial(Span { start: 0, end: 99 })
        );
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            RangeOutcome::Partial(Span { start: 50, end: 99 })
        );
        assert_eq!(Span { start: 3, end: 5 }.len(), 3);
    }

    #[test]
    fn unsatisfiable_and_malformed() {
        assert_eq!(parse_range("bytes=100-", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_range("bytes=x-2", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(
            parse_range("bytes=0-1,4-5", 100),
            RangeOutcome::Unsatisfiable
        );
        assert_eq!(parse_range("bytes=-0", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_range("bytes=--1", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_range("items=0-1", 100), RangeOutcome::Full);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("0-99"),
            Some(Span { start: 0, end: 99 })
        );
        assert_eq!(
            parse_content_range("bytes 10-19/*"),
            Some(Span { start: 10, end: 19 })
        );
        assert_eq!(
            parse_content_range("bytes=10-19"),
            Some(Span { start: 10, end: 19 })
        );
        assert_eq!(parse_content_range("9-1"), None);
        assert_eq!(parse_content_range("abc"), None);
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(10), "0-9");
    }
}

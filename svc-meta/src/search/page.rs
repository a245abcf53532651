//! Paging, ordering and relevance, as zot's search does them.

use super::{PageInfo, PageInput, SortCriteria};

/// A `requestedPage`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paged {
    limit: usize,
    offset: usize,
    pub sort: SortCriteria,
}

impl Paged {
    /// `input`, with `default` as the order when it names none.
    pub fn of(input: Option<PageInput>, default: SortCriteria) -> async_graphql::Result<Self> {
        let input = input.unwrap_or_default();
        let limit = input.limit.unwrap_or(0);
        let offset = input.offset.unwrap_or(0);
        if limit < 0 {
            return Err("requested page limit parameter can't be negative \
                        request parameter has invalid value"
                .into());
        }
        if offset < 0 {
            return Err("requested page offset parameter can't be negative \
                        request parameter has invalid value"
                .into());
        }
        Ok(Self {
            limit: usize::try_from(limit).unwrap_or(0),
            offset: usize::try_from(offset).unwrap_or(0),
            sort: input.sort_by.unwrap_or(default),
        })
    }

    /// The page of `items` (already filtered and ordered): from `offset`,
    /// at most `limit`; everything when both are 0, nothing when only the
    /// limit is (zot's rule).
    pub fn slice<T>(&self, items: Vec<T>) -> (PageInfo, Vec<T>) {
        let total = items.len();
        let page: Vec<T> = if self.limit == 0 && self.offset == 0 {
            items
        } else {
            items
                .into_iter()
                .skip(self.offset)
                .take(self.limit)
                .collect()
        };
        let info = PageInfo {
            total_count: i32::try_from(total).unwrap_or(i32::MAX),
            item_count: i32::try_from(page.len()).unwrap_or(i32::MAX),
        };
        (info, page)
    }

    /// The error for an order these results cannot take.
    pub fn unsupported(&self) -> async_graphql::Error {
        let name = match self.sort {
            SortCriteria::Relevance => "RELEVANCE",
            SortCriteria::UpdateTime => "UPDATE_TIME",
            SortCriteria::AlphabeticAsc => "ALPHABETIC_ASC",
            SortCriteria::AlphabeticDsc => "ALPHABETIC_DSC",
            SortCriteria::Severity => "SEVERITY",
            SortCriteria::Stars => "STARS",
            SortCriteria::Downloads => "DOWNLOADS",
        };
        format!(
            "sorting by '{name}' is not supported the pagination sort criteria is not supported"
        )
        .into()
    }
}

/// How well `repo` matches the search text `search` (trimmed of spaces and
/// slashes, lowercased): lower is better, -1 is no match. The last name
/// component matching counts most, then the first, then a prefix of the
/// whole name, then anywhere in it; an earlier match beats a later one.
pub fn rank_repo_name(search: &str, repo: &str) -> i32 {
    let s: Vec<&str> = search.trim_matches('/').split('/').collect();
    let r: Vec<&str> = repo.split('/').collect();
    let at = |i: usize, weight: i32| {
        i32::try_from(i + 1)
            .unwrap_or(i32::MAX)
            .saturating_mul(weight)
    };
    if s.len() > r.len() {
        return -1;
    }
    if search == repo {
        return 0;
    }
    let last = r.last().copied().unwrap_or_default();
    if s.len() == 1 {
        if let Some(i) = last.find(search) {
            return at(i, 1);
        }
        if let Some(i) = r[0].find(search) {
            return at(i, 10);
        }
    }
    let dirs = s.len() - 1;
    if s[..dirs] == r[..dirs]
        && let Some(i) = last.find(s[dirs])
    {
        return at(i, 1);
    }
    if repo.starts_with(search) {
        return 10;
    }
    match repo.find(search) {
        Some(i) => at(i, 100),
        None => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(limit: Option<i32>, offset: Option<i32>) -> Paged {
        let input = PageInput {
            limit,
            offset,
            sort_by: None,
        };
        Paged::of(Some(input), SortCriteria::Relevance).unwrap()
    }

    #[test]
    fn pages_follow_zots_rules() {
        let items: Vec<u32> = (0..5).collect();
        let (info, all) = page(None, None).slice(items.clone());
        assert_eq!((info.total_count, info.item_count, all.len()), (5, 5, 5));
        let (info, two) = page(Some(2), Some(1)).slice(items.clone());
        assert_eq!((info.total_count, info.item_count, two), (5, 2, vec![1, 2]));
        let (info, none) = page(None, Some(1)).slice(items.clone());
        assert_eq!((info.total_count, info.item_count, none.len()), (5, 0, 0));
        let (info, past) = page(Some(3), Some(9)).slice(items);
        assert_eq!((info.total_count, info.item_count, past.len()), (5, 0, 0));
        let bad = |l, o| {
            let input = PageInput {
                limit: l,
                offset: o,
                sort_by: None,
            };
            Paged::of(Some(input), SortCriteria::Relevance)
                .unwrap_err()
                .message
        };
        assert!(bad(Some(-1), None).contains("limit"));
        assert!(bad(None, Some(-1)).contains("offset"));
        assert_eq!(
            Paged::of(None, SortCriteria::UpdateTime).unwrap().sort,
            SortCriteria::UpdateTime
        );
    }

    #[test]
    fn repository_names_rank_as_in_zot() {
        // The whole name.
        assert_eq!(rank_repo_name("app/web", "app/web"), 0);
        // In the last component, by position.
        assert_eq!(rank_repo_name("web", "app/web"), 1);
        assert_eq!(rank_repo_name("eb", "app/web"), 2);
        // In the first component.
        assert_eq!(rank_repo_name("ap", "app/web"), 10);
        assert_eq!(rank_repo_name("pp", "app/web"), 20);
        // Directories equal, last component matching.
        assert_eq!(rank_repo_name("app/we", "app/web"), 1);
        // A prefix of the whole name, then anywhere.
        assert_eq!(rank_repo_name("a/b/c", "a/b/cd/e"), 10);
        assert_eq!(rank_repo_name("b/cd", "a/b/cd/e"), 300);
        // No match; more components than the name has.
        assert_eq!(rank_repo_name("db", "app/web"), -1);
        assert_eq!(rank_repo_name("a/b/c", "a/b"), -1);
        // The empty search matches everything alike.
        assert_eq!(rank_repo_name("", "app/web"), 1);
        assert_eq!(rank_repo_name("", "zzz"), 1);
    }
}

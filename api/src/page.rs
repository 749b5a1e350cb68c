//! Cursor pagination (API.md, Conventions): `?limit=` (default 20, at most
//! 100) and `?cursor=`, answered as `{items, next_cursor}`. A cursor is the
//! `(time, id)` of the last item of a page, opaque to clients.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ApiError, Code};

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// A page request, checked.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

impl TryFrom<&PageQuery> for Page {
    type Error = ApiError;

    fn try_from(query: &PageQuery) -> Result<Self, ApiError> {
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::new(
                Code::InvalidQuery,
                format!("limit is 1 to {MAX_LIMIT}"),
            ));
        }
        let after = match &query.cursor {
            None => None,
            Some(cursor) => Some(decode(cursor).ok_or_else(|| {
                ApiError::new(Code::InvalidQuery, "cursor is not one this API handed out")
            })?),
        };
        Ok(Page { limit, after })
    }
}

fn decode(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = cursor.split_once('_')?;
    let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    Some((at, id.parse().ok()?))
}

fn encode(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{}", at.timestamp_micros(), id.simple())
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Paged<T> {
    pub items: Vec<T>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Paged<T> {
    /// The page of `items` (at most `page.limit`); `key` gives the cursor of
    /// an item. A full page has a next one (which may be empty).
    pub fn of(items: Vec<T>, page: Page, key: impl Fn(&T) -> (DateTime<Utc>, Uuid)) -> Self {
        let next_cursor = (items.len() as i64 == page.limit)
            .then(|| {
                items.last().map(|last| {
                    let (at, id) = key(last);
                    encode(at, id)
                })
            })
            .flatten();
        Paged { items, next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::from_u128(42);
        assert_eq!(decode(&encode(at, id)), Some((at, id)));
    }

    #[test]
    fn bad_limits_and_cursors_are_refused() {
        for query in [
            PageQuery {
                limit: Some(0),
                cursor: None,
            },
            PageQuery {
                limit: Some(101),
                cursor: None,
            },
            PageQuery {
                limit: None,
                cursor: Some("nonsense".into()),
            },
        ] {
            assert_eq!(Page::try_from(&query).unwrap_err().code, "invalid_query");
        }
    }
}

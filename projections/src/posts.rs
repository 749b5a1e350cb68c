//! Posts, their reactions and comments: how post events change the read
//! models, and how the API reads them. Every read takes the viewer and
//! shows only what the viewer may see: never a deleted post, and a
//! `followers` post only to its author and the author's followers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, Postgres, Transaction};
use tidings_domain::post::{Commented, Event, Reacted, Reaction, Visibility};
use tidings_schemas::{Channel, EventEnvelope};
use uuid::Uuid;

use crate::accounts;
use crate::notifications::{self, Kind, Notify};
use crate::outbox::ChannelUpdate;
use crate::projection::{Effects, FeedChange, Projection};

/// The last update on `post:{id}`, with data `{post_id}`.
pub const POST_DELETED: &str = "post.deleted";

/// Who wrote a post or a comment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Author {
    pub id: Uuid,
    /// `null` for an account not projected yet.
    pub username: Option<String>,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// A post as a viewer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PostView {
    pub id: Uuid,
    pub author: Author,
    pub text: String,
    /// `public` or `followers`.
    pub visibility: String,
    pub created_at: DateTime<Utc>,
    pub like_count: i64,
    pub comment_count: i64,
    pub liked_by_me: bool,
    /// The viewer's own reaction, if any.
    pub my_reaction: Option<String>,
    /// Count per reaction type (types nobody chose are left out).
    pub reactions: BTreeMap<String, i64>,
    /// The images and videos it shows, in order.
    pub media: Vec<PostMedia>,
}

/// A media item of a post, as its viewers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PostMedia {
    pub id: Uuid,
    /// Where the bytes are served (`GET /media/{id}`).
    pub url: String,
    pub content_type: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// Images only.
    pub thumbnail_url: Option<String>,
}

impl From<&crate::media::MediaRow> for PostMedia {
    fn from(row: &crate::media::MediaRow) -> Self {
        let view = crate::media::MediaView::from(row);
        PostMedia {
            id: view.id,
            url: view.url,
            content_type: view.content_type,
            width: view.width,
            height: view.height,
            thumbnail_url: view.thumbnail_url,
        }
    }
}

#[derive(sqlx::FromRow)]
struct PostRow {
    id: Uuid,
    author_id: Uuid,
    author_username: Option<String>,
    author_display_name: Option<String>,
    author_avatar_url: Option<String>,
    text: String,
    visibility: String,
    created_at: DateTime<Utc>,
    like_count: i64,
    comment_count: i64,
    my_reaction: Option<String>,
    reactions: sqlx::types::Json<BTreeMap<String, i64>>,
    media: sqlx::types::Json<Vec<PostMedia>>,
}

impl From<PostRow> for PostView {
    fn from(row: PostRow) -> Self {
        PostView {
            id: row.id,
            author: Author {
                id: row.author_id,
                username: row.author_username,
                display_name: row.author_display_name,
                avatar_url: row.author_avatar_url,
            },
            text: row.text,
            visibility: row.visibility,
            created_at: row.created_at,
            like_count: row.like_count,
            comment_count: row.comment_count,
            liked_by_me: row.my_reaction.as_deref() == Some(Reaction::Like.as_str()),
            my_reaction: row.my_reaction,
            reactions: row.reactions.0,
            media: row.media.0,
        }
    }
}

/// A comment as a viewer of its post sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommentView {
    pub id: Uuid,
    pub post_id: Uuid,
    pub author: Author,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct CommentRow {
    id: Uuid,
    post_id: Uuid,
    author_id: Uuid,
    author_username: Option<String>,
    author_display_name: Option<String>,
    author_avatar_url: Option<String>,
    text: String,
    created_at: DateTime<Utc>,
}

impl From<CommentRow> for CommentView {
    fn from(row: CommentRow) -> Self {
        CommentView {
            id: row.id,
            post_id: row.post_id,
            author: Author {
                id: row.author_id,
                username: row.author_username,
                display_name: row.author_display_name,
                avatar_url: row.author_avatar_url,
            },
            text: row.text,
            created_at: row.created_at,
        }
    }
}

/// The post read model, as a projection of post events.
pub struct Posts;

impl Projection for Posts {
    type Event = Event;
    const TABLES: &'static [&'static str] = &["posts", "post_reactions", "comments", "post_media"];

    async fn apply(
        tx: &mut Transaction<'_, Postgres>,
        envelope: &EventEnvelope,
        event: &Event,
    ) -> Result<Effects, sqlx::Error> {
        apply(tx, envelope, event).await
    }
}

async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    envelope: &EventEnvelope,
    event: &Event,
) -> Result<Effects, sqlx::Error> {
    let mut effects = Effects::default();
    match event {
        Event::Created(c) => {
            sqlx::query(
                "INSERT INTO posts (id, author_id, text, visibility, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(c.post_id)
            .bind(c.author)
            .bind(&c.text)
            .bind(c.visibility.as_str())
            .bind(c.created_at)
            .execute(&mut **tx)
            .await?;
            if !c.media.is_empty() {
                let positions: Vec<i16> = (0..c.media.len() as i16).collect();
                sqlx::query(
                    "INSERT INTO post_media (post_id, position, media_id)
                     SELECT $1, p, m FROM unnest($2::smallint[], $3::uuid[]) AS u(p, m)",
                )
                .bind(c.post_id)
                .bind(&positions)
                .bind(&c.media)
                .execute(&mut **tx)
                .await?;
            }
            effects
                .accounts
                .extend(accounts::add_to_counts(tx, c.author, 0, 0, 1).await?);
            let readers = feed_readers(tx, c.author).await?;
            // Each follower is told of the new entry of their feed (a
            // followers-only post goes to followers alone, as it should).
            let entry = FeedEntry {
                post_id: c.post_id,
                author_id: c.author,
                author_username: sqlx::query_scalar("SELECT username FROM accounts WHERE id = $1")
                    .bind(c.author)
                    .fetch_optional(&mut **tx)
                    .await?,
                text: c.text.clone(),
                visibility: c.visibility.as_str().to_owned(),
                created_at: c.created_at,
                media: attached_media(tx, &c.media).await?,
            };
            let entry = serde_json::to_value(entry).expect("feed entries serialize");
            effects
                .updates
                .extend(
                    readers
                        .iter()
                        .filter(|reader| **reader != c.author)
                        .map(|reader| {
                            ChannelUpdate::new(
                                Channel::User(*reader),
                                "feed.post_created",
                                entry.clone(),
                            )
                        }),
                );
            effects.feeds.push(FeedChange::Add {
                users: readers,
                post_id: c.post_id,
                at: c.created_at,
            });
            let visibility = c.visibility;
            effects.updates.extend(
                mention(tx, envelope, &c.text, c.author, c.post_id, None, visibility).await?,
            );
        }
        Event::Deleted(d) => {
            sqlx::query("UPDATE posts SET deleted_at = $2 WHERE id = $1")
                .bind(d.post_id)
                .bind(d.deleted_at)
                .execute(&mut **tx)
                .await?;
            effects
                .accounts
                .extend(accounts::add_to_counts(tx, d.author, 0, 0, -1).await?);
            effects.feeds.push(FeedChange::Reset {
                users: feed_readers(tx, d.author).await?,
            });
            // The post's channel ends with it: gateways end its
            // subscriptions on this update (realtime/src/session.rs).
            effects.updates.push(ChannelUpdate::new(
                Channel::Post(d.post_id),
                POST_DELETED,
                serde_json::json!({ "post_id": d.post_id }),
            ));
        }
        Event::Reacted(r) => {
            sqlx::query(
                "INSERT INTO post_reactions (post_id, user_id, reaction, reacted_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (post_id, user_id) DO UPDATE SET reaction = EXCLUDED.reaction, reacted_at = EXCLUDED.reacted_at",
            )
            .bind(r.post_id)
            .bind(r.user)
            .bind(r.reaction.as_str())
            .bind(r.reacted_at)
            .execute(&mut **tx)
            .await?;
            add_likes(tx, r.post_id, likes_added(r)).await?;
            effects.updates.extend(counts(tx, r.post_id).await?);
            if let Some(notify) = reaction_notice(envelope, r) {
                effects.updates.extend(notify.write(tx).await?);
            }
        }
        Event::Unreacted(u) => {
            sqlx::query("DELETE FROM post_reactions WHERE post_id = $1 AND user_id = $2")
                .bind(u.post_id)
                .bind(u.user)
                .execute(&mut **tx)
                .await?;
            let likes = -i64::from(u.reaction == Reaction::Like);
            add_likes(tx, u.post_id, likes).await?;
            effects.updates.extend(counts(tx, u.post_id).await?);
        }
        Event::Commented(c) => {
            sqlx::query(
                "INSERT INTO comments (id, post_id, author_id, text, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(c.comment_id)
            .bind(c.post_id)
            .bind(c.author)
            .bind(&c.text)
            .bind(c.commented_at)
            .execute(&mut **tx)
            .await?;
            let visibility: Option<String> = sqlx::query_scalar(
                "UPDATE posts SET comment_count = comment_count + 1 WHERE id = $1 RETURNING visibility",
            )
            .bind(c.post_id)
            .fetch_optional(&mut **tx)
            .await?;
            effects.updates.extend(counts(tx, c.post_id).await?);
            effects
                .updates
                .extend(comment_notice(envelope, c).write(tx).await?);
            let visibility = match visibility.as_deref() {
                Some("public") => Visibility::Public,
                _ => Visibility::Followers,
            };
            effects.updates.extend(
                mention(
                    tx,
                    envelope,
                    &c.text,
                    c.post_author,
                    c.post_id,
                    Some((c.comment_id, c.author)),
                    visibility,
                )
                .await?,
            );
        }
    }
    Ok(effects)
}

/// How a reaction changes its post's like count.
pub fn likes_added(r: &Reacted) -> i64 {
    i64::from(r.reaction == Reaction::Like) - i64::from(r.previous == Some(Reaction::Like))
}

/// What the post's author is told of a reaction: a first reaction is news,
/// changing it is not.
pub fn reaction_notice<'a>(envelope: &'a EventEnvelope, r: &Reacted) -> Option<Notify<'a>> {
    if r.previous.is_some() {
        return None;
    }
    let (kind, reaction) = match r.reaction {
        Reaction::Like => (Kind::Like, None),
        other => (Kind::Reaction, Some(other.as_str())),
    };
    Some(Notify {
        envelope,
        user_id: r.post_author,
        kind,
        actor_id: r.user,
        post_id: Some(r.post_id),
        comment_id: None,
        reaction,
        room_id: None,
    })
}

/// What the post's author is told of a comment.
pub fn comment_notice<'a>(envelope: &'a EventEnvelope, c: &Commented) -> Notify<'a> {
    Notify {
        envelope,
        user_id: c.post_author,
        kind: Kind::Comment,
        actor_id: c.author,
        post_id: Some(c.post_id),
        comment_id: Some(c.comment_id),
        reaction: None,
        room_id: None,
    }
}

/// What a post's channel (`post:{id}`) receives on every reaction and
/// comment: the current counts, last value wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Counts {
    pub post_id: Uuid,
    pub like_count: i64,
    pub comment_count: i64,
    pub reactions: sqlx::types::Json<BTreeMap<String, i64>>,
}

async fn counts(
    tx: &mut Transaction<'_, Postgres>,
    post_id: Uuid,
) -> Result<Option<ChannelUpdate>, sqlx::Error> {
    let counts: Option<Counts> = sqlx::query_as(
        "SELECT p.id AS post_id, p.like_count, p.comment_count,
                coalesce((SELECT jsonb_object_agg(c.reaction, c.n) FROM
                    (SELECT reaction, count(*) AS n FROM post_reactions WHERE post_id = p.id GROUP BY reaction) c), '{}') AS reactions
         FROM posts p WHERE p.id = $1",
    )
    .bind(post_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(counts.map(|counts| {
        ChannelUpdate::new(
            Channel::Post(post_id),
            "post.counts",
            serde_json::to_value(counts).expect("counts serialize"),
        )
    }))
}

/// A new post in a follower's feed, as pushed on `user:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub author_username: Option<String>,
    pub text: String,
    pub visibility: String,
    pub created_at: DateTime<Utc>,
    /// As on the post's view, in the post's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<PostMedia>,
}

/// The views of `ids`, in their order (the API checked that each exists
/// before the post was decided).
async fn attached_media(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
) -> Result<Vec<PostMedia>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = crate::media::by_ids(&mut **tx, ids).await?;
    Ok(ids
        .iter()
        .filter_map(|id| rows.iter().find(|row| row.id == *id))
        .map(PostMedia::from)
        .collect())
}

/// Whose home feeds hold the posts of `author`: the author's and the
/// followers'.
async fn feed_readers(
    tx: &mut Transaction<'_, Postgres>,
    author: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT $1::uuid UNION ALL SELECT follower_id FROM follows WHERE followee_id = $1",
    )
    .bind(author)
    .fetch_all(&mut **tx)
    .await
}

async fn add_likes(
    tx: &mut Transaction<'_, Postgres>,
    post_id: Uuid,
    likes: i64,
) -> Result<(), sqlx::Error> {
    if likes != 0 {
        sqlx::query("UPDATE posts SET like_count = like_count + $2 WHERE id = $1")
            .bind(post_id)
            .bind(likes)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Notifies the users `text` mentions who may see the post (of
/// `post_author`): anyone for a public post, the author's followers for a
/// followers-only one. `comment` is the comment and its author when the
/// text is a comment's.
async fn mention(
    tx: &mut Transaction<'_, Postgres>,
    envelope: &EventEnvelope,
    text: &str,
    post_author: Uuid,
    post_id: Uuid,
    comment: Option<(Uuid, Uuid)>,
    visibility: Visibility,
) -> Result<Vec<ChannelUpdate>, sqlx::Error> {
    let names = notifications::mentions(text);
    if names.is_empty() {
        return Ok(vec![]);
    }
    let mentioned: Vec<Uuid> = sqlx::query_scalar(
        "SELECT a.id FROM accounts a
         WHERE lower(a.username) = ANY($1)
           AND ($2 OR a.id = $3 OR EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = a.id AND f.followee_id = $3))",
    )
    .bind(&names)
    .bind(visibility == Visibility::Public)
    .bind(post_author)
    .fetch_all(&mut **tx)
    .await?;
    let actor = comment.map_or(post_author, |(_, author)| author);
    let mut updates = Vec::new();
    // The author of a commented post is told of the comment already.
    let told = comment.map(|_| post_author);
    for user_id in mentioned.into_iter().filter(|id| Some(*id) != told) {
        let notify = Notify {
            envelope,
            user_id,
            kind: Kind::Mention,
            actor_id: actor,
            post_id: Some(post_id),
            comment_id: comment.map(|(id, _)| id),
            reaction: None,
            room_id: None,
        };
        updates.extend(notify.write(tx).await?);
    }
    Ok(updates)
}

/// A [`PostMedia`] as JSON, from a row `m` of `media`: in SQL, so a page
/// of posts or messages reads its media in the same query.
macro_rules! media_object {
    () => {
        "jsonb_build_object('id', m.id, 'url', '/media/' || m.id, 'content_type', m.content_type,
            'width', m.width, 'height', m.height,
            'thumbnail_url', CASE WHEN m.thumbnail_key IS NOT NULL THEN '/media/' || m.id || '/thumbnail' END)"
    };
}
pub(crate) use media_object;

/// The columns of a [`PostView`] for the viewer `$1`.
const POST_COLUMNS: &str = concat!(
    "p.id, p.author_id, a.username AS author_username, a.display_name AS author_display_name,
    a.avatar_url AS author_avatar_url, p.text, p.visibility, p.created_at, p.like_count, p.comment_count,
    (SELECT r.reaction FROM post_reactions r WHERE r.post_id = p.id AND r.user_id = $1) AS my_reaction,
    coalesce((SELECT jsonb_object_agg(c.reaction, c.n) FROM
        (SELECT reaction, count(*) AS n FROM post_reactions WHERE post_id = p.id GROUP BY reaction) c), '{}') AS reactions,
    coalesce((SELECT jsonb_agg(",
    media_object!(),
    " ORDER BY pm.position)
        FROM post_media pm JOIN media m ON m.id = pm.media_id AND m.deleted_at IS NULL
        WHERE pm.post_id = p.id), '[]') AS media"
);

/// What the viewer `$1` may see of `posts p`: no deleted post, and a
/// followers-only one only as its author or a follower of its author.
const VISIBLE: &str = "p.deleted_at IS NULL AND (p.visibility = 'public' OR p.author_id = $1
    OR EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = $1 AND f.followee_id = p.author_id))";

/// A post, if `viewer` may see it.
pub async fn visible(
    db: impl PgExecutor<'_>,
    viewer: Uuid,
    post_id: Uuid,
) -> Result<Option<PostView>, sqlx::Error> {
    let row: Option<PostRow> = sqlx::query_as(&format!(
        "SELECT {POST_COLUMNS} FROM posts p LEFT JOIN accounts a ON a.id = p.author_id
         WHERE p.id = $2 AND {VISIBLE}"
    ))
    .bind(viewer)
    .bind(post_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(PostView::from))
}

/// Whose posts a list holds.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// One author's.
    Author(Uuid),
    /// The viewer's home feed: own posts and those of whom the viewer
    /// follows.
    Feed,
}

/// Posts the viewer may see, newest first, after the cursor `(created_at,
/// id)`.
pub async fn list(
    db: impl PgExecutor<'_>,
    viewer: Uuid,
    source: Source,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<PostView>, sqlx::Error> {
    let (at, id) = after.unzip();
    let (whose, author) = match source {
        Source::Author(author) => ("p.author_id = $2", author),
        Source::Feed => (
            "(p.author_id = $1 OR p.author_id IN (SELECT followee_id FROM follows WHERE follower_id = $1))",
            viewer,
        ),
    };
    let rows: Vec<PostRow> = sqlx::query_as(&format!(
        "SELECT {POST_COLUMNS} FROM posts p LEFT JOIN accounts a ON a.id = p.author_id
         WHERE {whose} AND {VISIBLE}
           AND ($3::timestamptz IS NULL OR (p.created_at, p.id) < ($3, $4))
         ORDER BY p.created_at DESC, p.id DESC
         LIMIT $5"
    ))
    .bind(viewer)
    .bind(author)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(PostView::from).collect())
}

/// A comment row with its author's names, as [`CommentRow`] reads it.
const COMMENTS_FROM: &str = "SELECT c.id, c.post_id, c.author_id, a.username AS author_username,
        a.display_name AS author_display_name, a.avatar_url AS author_avatar_url, c.text, c.created_at
    FROM comments c LEFT JOIN accounts a ON a.id = c.author_id";

/// A post's comments, oldest first, after the cursor `(created_at, id)`.
/// The caller has checked that the viewer may see the post.
pub async fn comments(
    db: impl PgExecutor<'_>,
    post_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<CommentView>, sqlx::Error> {
    let (at, id) = after.unzip();
    let rows: Vec<CommentRow> = sqlx::query_as(&format!(
        "{COMMENTS_FROM}
         WHERE c.post_id = $1 AND ($2::timestamptz IS NULL OR (c.created_at, c.id) > ($2, $3))
         ORDER BY c.created_at, c.id
         LIMIT $4"
    ))
    .bind(post_id)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(CommentView::from).collect())
}

/// One comment, as its post's viewers see it.
pub async fn comment(
    db: impl PgExecutor<'_>,
    comment_id: Uuid,
) -> Result<Option<CommentView>, sqlx::Error> {
    let row: Option<CommentRow> = sqlx::query_as(&format!("{COMMENTS_FROM} WHERE c.id = $1"))
        .bind(comment_id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(CommentView::from))
}

/// The newest `limit` posts of the viewer's home feed, as `(id, created_at)`:
/// what the feed cache holds.
pub async fn feed_index(
    db: impl PgExecutor<'_>,
    viewer: Uuid,
    limit: i64,
) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT p.id, p.created_at FROM posts p
         WHERE (p.author_id = $1 OR p.author_id IN (SELECT followee_id FROM follows WHERE follower_id = $1))
           AND {VISIBLE}
         ORDER BY p.created_at DESC, p.id DESC
         LIMIT $2"
    ))
    .bind(viewer)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The posts of `ids` the viewer may see, in the order of `ids`.
pub async fn by_ids(
    db: impl PgExecutor<'_>,
    viewer: Uuid,
    ids: &[Uuid],
) -> Result<Vec<PostView>, sqlx::Error> {
    let rows: Vec<PostRow> = sqlx::query_as(&format!(
        "SELECT {POST_COLUMNS} FROM posts p LEFT JOIN accounts a ON a.id = p.author_id
         WHERE p.id = ANY($2) AND {VISIBLE}"
    ))
    .bind(viewer)
    .bind(ids)
    .fetch_all(db)
    .await?;
    let mut found: std::collections::HashMap<Uuid, PostView> = rows
        .into_iter()
        .map(|row| (row.id, PostView::from(row)))
        .collect();
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

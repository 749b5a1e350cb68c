//! Bulk loading, for `tidings rebuild`'s catch-up: the events whose whole
//! change to the read models is rows to add and counters to raise are
//! gathered over a batch and written with one multi-row statement per table
//! (`UNNEST` of arrays), instead of a few statements each.
//!
//! The rows are exactly the ones [`crate::projection::apply`] writes for the
//! same events (the rebuild's digests compare them with the live tables);
//! what `apply` returns beyond rows ([`crate::projection::Effects`]: pushes,
//! cache refreshes) is not made, as a rebuild has no subscribers. Any other
//! event is applied alone, after what was gathered is written
//! ([`Loader::flush`]), so every event still sees the rows of the ones
//! before it. The live projector does not load in bulk: its batches are
//! small, and every event's pushes matter there.
//!
//! Taken in bulk: `post.created` (without media or mentions),
//! `post.commented` (without mentions), `post.reacted` (a user's reaction
//! to a post once per load) and `room.message_posted` (without media). A
//! message's `message` notifications are not made: those exist for readers
//! who were offline when the live projector applied the message, and the
//! rebuild's switch carries the live ones over
//! ([`crate::rebuild::NOT_FROM_THE_LOG`]); nor is marking them read when
//! their reader writes.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use tidings_domain::post::Event as PostEvent;
use tidings_domain::room::Event as RoomEvent;
use tidings_schemas::{DomainEvent, EventEnvelope};
use uuid::Uuid;

use crate::notifications::{self, NotificationRow};
use crate::posts;

/// Rows gathered for one multi-row write per table.
#[derive(Default)]
pub struct Loader {
    posts: Posts,
    reactions: Reactions,
    comments: Comments,
    /// Per post: comments and likes to add to its counts.
    counts: BTreeMap<Uuid, (i64, i64)>,
    /// Per author: posts to add to the account's count.
    authored: BTreeMap<Uuid, i64>,
    notifications: Vec<NotificationRow>,
    messages: Messages,
    /// Per room and author: their latest message (ordinal, id, time), which
    /// they have read.
    read_own: BTreeMap<(Uuid, Uuid), (i64, Uuid, DateTime<Utc>)>,
    /// Events gathered since the last flush.
    taken: usize,
}

#[derive(Default)]
struct Posts {
    ids: Vec<Uuid>,
    authors: Vec<Uuid>,
    texts: Vec<String>,
    visibilities: Vec<&'static str>,
    created: Vec<DateTime<Utc>>,
}

#[derive(Default)]
struct Reactions {
    keys: HashSet<(Uuid, Uuid)>,
    posts: Vec<Uuid>,
    users: Vec<Uuid>,
    reactions: Vec<&'static str>,
    at: Vec<DateTime<Utc>>,
}

#[derive(Default)]
struct Comments {
    ids: Vec<Uuid>,
    posts: Vec<Uuid>,
    authors: Vec<Uuid>,
    texts: Vec<String>,
    created: Vec<DateTime<Utc>>,
}

#[derive(Default)]
struct Messages {
    ids: Vec<Uuid>,
    rooms: Vec<Uuid>,
    authors: Vec<Uuid>,
    ordinals: Vec<i64>,
    texts: Vec<String>,
    created: Vec<DateTime<Utc>>,
}

impl Loader {
    /// Events gathered and not written yet.
    pub fn len(&self) -> usize {
        self.taken
    }

    pub fn is_empty(&self) -> bool {
        self.taken == 0
    }

    /// Gathers an admitted event when its rows can be written with others;
    /// `false` when it is to be applied alone (after [`Loader::flush`]).
    pub fn take(&mut self, envelope: &EventEnvelope, event: &DomainEvent) -> bool {
        let event = match event {
            DomainEvent::Post(event) => event,
            DomainEvent::Room(RoomEvent::MessagePosted(m)) if m.media_ids.is_empty() => {
                let ordinal = m.ordinal as i64;
                self.messages.ids.push(m.message_id);
                self.messages.rooms.push(m.room_id);
                self.messages.authors.push(m.author);
                self.messages.ordinals.push(ordinal);
                self.messages.texts.push(m.text.clone());
                self.messages.created.push(m.posted_at);
                let read = self.read_own.entry((m.room_id, m.author)).or_insert((
                    ordinal,
                    m.message_id,
                    m.posted_at,
                ));
                if ordinal > read.0 {
                    *read = (ordinal, m.message_id, m.posted_at);
                }
                self.taken += 1;
                return true;
            }
            _ => return false,
        };
        match event {
            PostEvent::Created(c) => {
                if !c.media.is_empty() || !notifications::mentions(&c.text).is_empty() {
                    return false;
                }
                self.posts.ids.push(c.post_id);
                self.posts.authors.push(c.author);
                self.posts.texts.push(c.text.clone());
                self.posts.visibilities.push(c.visibility.as_str());
                self.posts.created.push(c.created_at);
                *self.authored.entry(c.author).or_default() += 1;
            }
            PostEvent::Commented(c) => {
                if !notifications::mentions(&c.text).is_empty() {
                    return false;
                }
                self.comments.ids.push(c.comment_id);
                self.comments.posts.push(c.post_id);
                self.comments.authors.push(c.author);
                self.comments.texts.push(c.text.clone());
                self.comments.created.push(c.commented_at);
                self.counts.entry(c.post_id).or_default().0 += 1;
                self.notifications
                    .extend(posts::comment_notice(envelope, c).row());
            }
            PostEvent::Reacted(r) => {
                // One statement cannot change a row twice: a second
                // reaction of the same user to the same post waits.
                if !self.reactions.keys.insert((r.post_id, r.user)) {
                    return false;
                }
                self.reactions.posts.push(r.post_id);
                self.reactions.users.push(r.user);
                self.reactions.reactions.push(r.reaction.as_str());
                self.reactions.at.push(r.reacted_at);
                self.counts.entry(r.post_id).or_default().1 += posts::likes_added(r);
                self.notifications.extend(
                    posts::reaction_notice(envelope, r)
                        .as_ref()
                        .and_then(|n| n.row()),
                );
            }
            _ => return false,
        }
        self.taken += 1;
        true
    }

    /// Writes what was gathered, in the order the events' own statements
    /// would: posts before the reactions, comments and counts that refer to
    /// them.
    pub async fn flush(&mut self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.taken == 0 {
            return Ok(());
        }
        let Loader {
            posts,
            reactions,
            comments,
            counts,
            authored,
            notifications,
            messages,
            read_own,
            taken,
        } = std::mem::take(self);
        metrics::counter!("tidings_projector_bulk_events_total").increment(taken as u64);
        if !posts.ids.is_empty() {
            sqlx::query(
                "INSERT INTO posts (id, author_id, text, visibility, created_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[])",
            )
            .bind(&posts.ids)
            .bind(&posts.authors)
            .bind(&posts.texts)
            .bind(&posts.visibilities)
            .bind(&posts.created)
            .execute(&mut **tx)
            .await?;
        }
        if !reactions.posts.is_empty() {
            sqlx::query(
                "INSERT INTO post_reactions (post_id, user_id, reaction, reacted_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[])
                 ON CONFLICT (post_id, user_id) DO UPDATE SET reaction = EXCLUDED.reaction, reacted_at = EXCLUDED.reacted_at",
            )
            .bind(&reactions.posts)
            .bind(&reactions.users)
            .bind(&reactions.reactions)
            .bind(&reactions.at)
            .execute(&mut **tx)
            .await?;
        }
        if !comments.ids.is_empty() {
            sqlx::query(
                "INSERT INTO comments (id, post_id, author_id, text, created_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[])",
            )
            .bind(&comments.ids)
            .bind(&comments.posts)
            .bind(&comments.authors)
            .bind(&comments.texts)
            .bind(&comments.created)
            .execute(&mut **tx)
            .await?;
        }
        let counts: Vec<(Uuid, (i64, i64))> =
            counts.into_iter().filter(|(_, n)| *n != (0, 0)).collect();
        if !counts.is_empty() {
            let ids: Vec<Uuid> = counts.iter().map(|(id, _)| *id).collect();
            let comments: Vec<i64> = counts.iter().map(|(_, (c, _))| *c).collect();
            let likes: Vec<i64> = counts.iter().map(|(_, (_, l))| *l).collect();
            sqlx::query(
                "UPDATE posts p SET comment_count = p.comment_count + u.c, like_count = p.like_count + u.l
                 FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[]) AS u(id, c, l)
                 WHERE p.id = u.id",
            )
            .bind(&ids)
            .bind(&comments)
            .bind(&likes)
            .execute(&mut **tx)
            .await?;
        }
        if !authored.is_empty() {
            // As `accounts::add_to_counts` for each post (the version counts
            // every change).
            let (ids, added): (Vec<Uuid>, Vec<i64>) = authored.into_iter().unzip();
            sqlx::query(
                "UPDATE accounts a SET posts_count = a.posts_count + u.n, version = a.version + u.n
                 FROM UNNEST($1::uuid[], $2::bigint[]) AS u(id, n)
                 WHERE a.id = u.id",
            )
            .bind(&ids)
            .bind(&added)
            .execute(&mut **tx)
            .await?;
        }
        if !messages.ids.is_empty() {
            sqlx::query(
                "INSERT INTO room_messages (id, room_id, author_id, ordinal, text, created_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::timestamptz[])",
            )
            .bind(&messages.ids)
            .bind(&messages.rooms)
            .bind(&messages.authors)
            .bind(&messages.ordinals)
            .bind(&messages.texts)
            .bind(&messages.created)
            .execute(&mut **tx)
            .await?;
        }
        if !read_own.is_empty() {
            // One has read what one wrote, as each message's own statement
            // says (`rooms.rs`): the latest one of each author counts.
            let mut rooms = Vec::with_capacity(read_own.len());
            let mut users = Vec::with_capacity(read_own.len());
            let mut ordinals = Vec::with_capacity(read_own.len());
            let mut ids = Vec::with_capacity(read_own.len());
            let mut at = Vec::with_capacity(read_own.len());
            for ((room, user), (ordinal, id, time)) in read_own {
                rooms.push(room);
                users.push(user);
                ordinals.push(ordinal);
                ids.push(id);
                at.push(time);
            }
            sqlx::query(
                "UPDATE room_members m SET last_read = u.o, last_read_message = u.id, read_at = u.at
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[], $5::timestamptz[]) AS u(room_id, user_id, o, id, at)
                 WHERE m.room_id = u.room_id AND m.user_id = u.user_id AND m.last_read < u.o",
            )
            .bind(&rooms)
            .bind(&users)
            .bind(&ordinals)
            .bind(&ids)
            .bind(&at)
            .execute(&mut **tx)
            .await?;
        }
        if !notifications.is_empty() {
            let column = |f: fn(&NotificationRow) -> Option<Uuid>| -> Vec<Option<Uuid>> {
                notifications.iter().map(f).collect()
            };
            let ids: Vec<Uuid> = notifications.iter().map(|n| n.id).collect();
            let users: Vec<Uuid> = notifications.iter().map(|n| n.user_id).collect();
            let kinds: Vec<&str> = notifications.iter().map(|n| n.kind).collect();
            let actors: Vec<Uuid> = notifications.iter().map(|n| n.actor_id).collect();
            let reactions: Vec<Option<&str>> = notifications.iter().map(|n| n.reaction).collect();
            let created: Vec<DateTime<Utc>> = notifications.iter().map(|n| n.created_at).collect();
            sqlx::query(
                "INSERT INTO notifications (id, user_id, kind, actor_id, post_id, comment_id, reaction, room_id, created_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[], $6::uuid[], $7::text[], $8::uuid[], $9::timestamptz[])
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&ids)
            .bind(&users)
            .bind(&kinds)
            .bind(&actors)
            .bind(column(|n| n.post_id))
            .bind(column(|n| n.comment_id))
            .bind(&reactions)
            .bind(column(|n| n.room_id))
            .bind(&created)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

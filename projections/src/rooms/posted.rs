//! Messages posted one after another within a live batch, projected
//! together: the rows, the pushes and the notices of many messages in a few
//! statements, whatever their number, where each message alone takes about
//! seven. A busy room's messages arrive in runs like this, and the projector
//! is one loop: its statements per message bound how many messages a
//! second Tidings takes.
//!
//! What a run writes and returns is what [`super::Rooms`] does for each of
//! its messages in turn (`room.message_posted`), with two differences that
//! no reader can tell from the order of statements: each author's read mark
//! moves once, to their latest message of the run, and each reader's
//! `notifications.read` push (their unread count) comes once, after the
//! run's messages, with the count as the run leaves it.
//!
//! Only messages without media are taken (as in [`crate::bulk`]); any other
//! event ends the run, which is written before that event is applied, so
//! every event still sees the rows of the ones before it.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use tidings_domain::room::{Event as RoomEvent, MessagePosted};
use tidings_schemas::{DomainEvent, EventEnvelope};
use uuid::Uuid;

use super::{MessageRow, MessageView, MESSAGES_FROM};
use crate::notifications::{self, MessageNotice, MESSAGE_ROOM_MAX};
use crate::projection::Effects;

/// A run of posted messages, gathered until [`Posted::flush`].
#[derive(Default)]
pub struct Posted {
    messages: Vec<Taken>,
}

struct Taken {
    event_id: Uuid,
    at: DateTime<Utc>,
    message: MessagePosted,
}

impl Posted {
    /// Gathers a `room.message_posted` without media; `false` for any other
    /// event, which is to be applied alone after [`Posted::flush`].
    pub fn take(&mut self, envelope: &EventEnvelope, event: &DomainEvent) -> bool {
        match event {
            DomainEvent::Room(RoomEvent::MessagePosted(m)) if m.media_ids.is_empty() => {
                self.messages.push(Taken {
                    event_id: envelope.event_id,
                    at: envelope.occurred_at,
                    message: m.clone(),
                });
                true
            }
            _ => false,
        }
    }

    /// Writes the run and returns its pushes and notices, in the order of
    /// its messages.
    pub async fn flush(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Effects, sqlx::Error> {
        let messages = std::mem::take(&mut self.messages);
        let mut effects = Effects::default();
        if messages.is_empty() {
            return Ok(effects);
        }
        metrics::counter!("tidings_projector_bulk_events_total").increment(messages.len() as u64);
        let mut ids = Vec::with_capacity(messages.len());
        let mut rooms = Vec::with_capacity(messages.len());
        let mut authors = Vec::with_capacity(messages.len());
        let mut ordinals = Vec::with_capacity(messages.len());
        let mut texts = Vec::with_capacity(messages.len());
        let mut created = Vec::with_capacity(messages.len());
        // Per room and author: their latest message of the run, which they
        // have read.
        let mut read_own: BTreeMap<(Uuid, Uuid), (i64, Uuid, DateTime<Utc>)> = BTreeMap::new();
        for Taken { message: m, .. } in &messages {
            let ordinal = m.ordinal as i64;
            ids.push(m.message_id);
            rooms.push(m.room_id);
            authors.push(m.author);
            ordinals.push(ordinal);
            texts.push(m.text.as_str());
            created.push(m.posted_at);
            let read = read_own.entry((m.room_id, m.author)).or_insert((
                ordinal,
                m.message_id,
                m.posted_at,
            ));
            if ordinal > read.0 {
                *read = (ordinal, m.message_id, m.posted_at);
            }
        }
        sqlx::query(
            "INSERT INTO room_messages (id, room_id, author_id, ordinal, text, media_ids, created_at)
             SELECT u.id, u.room_id, u.author_id, u.ordinal, u.text, '{}', u.created_at
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::timestamptz[])
               AS u(id, room_id, author_id, ordinal, text, created_at)",
        )
        .bind(&ids)
        .bind(&rooms)
        .bind(&authors)
        .bind(&ordinals)
        .bind(&texts)
        .bind(&created)
        .execute(&mut **tx)
        .await?;
        let marks = read_marks(&read_own);
        sqlx::query(
            "UPDATE room_members m SET last_read = u.o, last_read_message = u.id, read_at = u.at
             FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[], $5::timestamptz[]) AS u(room_id, user_id, o, id, at)
             WHERE m.room_id = u.room_id AND m.user_id = u.user_id AND m.last_read < u.o",
        )
        .bind(&marks.rooms)
        .bind(&marks.users)
        .bind(&marks.ordinals)
        .bind(&marks.ids)
        .bind(&marks.at)
        .execute(&mut **tx)
        .await?;
        let views: HashMap<Uuid, MessageView> = sqlx::query_as::<_, MessageRow>(&format!(
            "{MESSAGES_FROM} JOIN UNNEST($1::uuid[]) AS wanted(id) ON wanted.id = x.id"
        ))
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|row| (row.id, MessageView::from(row)))
        .collect();
        let mut distinct_rooms = rooms.clone();
        distinct_rooms.sort_unstable();
        distinct_rooms.dedup();
        let mut members: HashMap<Uuid, (Vec<Uuid>, i32)> = HashMap::new();
        let rows: Vec<(Uuid, Uuid, i32)> = sqlx::query_as(
            "SELECT m.room_id, m.user_id, r.participant_count
             FROM room_members m JOIN rooms r ON r.id = m.room_id
             WHERE m.room_id = ANY($1)",
        )
        .bind(&distinct_rooms)
        .fetch_all(&mut **tx)
        .await?;
        for (room, user, count) in rows {
            let entry = members.entry(room).or_insert_with(|| (Vec::new(), count));
            entry.0.push(user);
        }
        for Taken {
            event_id,
            at,
            message: m,
        } in &messages
        {
            let Some(view) = views.get(&m.message_id) else {
                continue;
            };
            let data = serde_json::to_value(view).expect("messages serialize");
            let (room_members, count) = members
                .get(&m.room_id)
                .map_or((&[][..], 0), |(users, count)| (users.as_slice(), *count));
            effects.updates.extend(super::to_room_and_members(
                m.room_id,
                room_members,
                "message.created",
                data,
            ));
            let readers: Vec<Uuid> = match count <= MESSAGE_ROOM_MAX {
                true => room_members
                    .iter()
                    .copied()
                    .filter(|u| *u != m.author)
                    .collect(),
                false => Vec::new(),
            };
            if !readers.is_empty() {
                effects.notices.push(MessageNotice {
                    event_id: *event_id,
                    at: *at,
                    room_id: m.room_id,
                    message_id: m.message_id,
                    author: m.author,
                    ordinal: m.ordinal as i64,
                    readers,
                });
            }
        }
        effects.updates.extend(
            notifications::rooms_read(tx, &marks.rooms, &marks.users, &marks.ordinals, &marks.at)
                .await?,
        );
        Ok(effects)
    }
}

/// The read marks of a run, as columns.
#[derive(Default)]
struct Marks {
    rooms: Vec<Uuid>,
    users: Vec<Uuid>,
    ordinals: Vec<i64>,
    ids: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
}

fn read_marks(read_own: &BTreeMap<(Uuid, Uuid), (i64, Uuid, DateTime<Utc>)>) -> Marks {
    let mut marks = Marks::default();
    for (&(room, user), &(ordinal, id, at)) in read_own {
        marks.rooms.push(room);
        marks.users.push(user);
        marks.ordinals.push(ordinal);
        marks.ids.push(id);
        marks.at.push(at);
    }
    marks
}

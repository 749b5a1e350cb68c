//! The [`Projection`] trait: how the events of one decider change read
//! models, and the one routing of events to projections that the generic
//! projector (`projector.rs`) runs.
//!
//! A projection applies one admitted event inside the projector's
//! transaction and says what else it asks for once that transaction
//! commits ([`Effects`]). The projector owns everything around it: batches,
//! offsets, the sequence rule, the outbox, the caches.
//!
//! To project a new aggregate: a module with a type implementing
//! [`Projection`] and its migration; the match in [`apply`] is exhaustive
//! over the registry's events, so the compiler points at the one line to add.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use tidings_schemas::{DomainEvent, EventEnvelope};
use uuid::Uuid;

use crate::accounts::{AccountRow, Accounts};
use crate::details::DetailsRow;
use crate::follows::Follows;
use crate::media::Media;
use crate::notifications::{Inbox, MessageNotice};
use crate::outbox::ChannelUpdate;
use crate::posts::Posts;
use crate::rooms::Rooms;
use crate::webhooks::Webhooks;

/// What applying events asks for beyond their rows.
#[derive(Debug, Default)]
pub struct Effects {
    /// Accounts whose cache entry is to be refreshed.
    pub accounts: Vec<AccountRow>,
    /// What realtime channels receive, appended to the outbox in the same
    /// transaction.
    pub updates: Vec<ChannelUpdate>,
    /// Changes to the cached home feeds, made once the transaction commits.
    pub feeds: Vec<FeedChange>,
    /// Extended profiles whose cache entry is to be refreshed.
    pub details: Vec<DetailsRow>,
    /// Messages that notify their readers who are offline: presence is
    /// asked once per batch, before the commit.
    pub notices: Vec<MessageNotice>,
}

/// A change to the cached home feeds (Redis sorted sets, `cache.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum FeedChange {
    /// A post enters the feeds of `users` (of those that are cached).
    Add {
        users: Vec<Uuid>,
        post_id: Uuid,
        at: DateTime<Utc>,
    },
    /// The cached feeds of `users` are dropped: their next read fills them
    /// again from PostgreSQL (after a deletion, a follow, an unfollow).
    Reset { users: Vec<Uuid> },
}

impl Effects {
    /// Adds what a later event asked for; a later row of the same account
    /// replaces the earlier.
    pub fn extend(&mut self, other: Effects) {
        for account in other.accounts {
            self.accounts.retain(|a| a.id != account.id);
            self.accounts.push(account);
        }
        self.updates.extend(other.updates);
        self.feeds.extend(other.feeds);
        for details in other.details {
            self.details.retain(|d| d.user_id != details.user_id);
            self.details.push(details);
        }
        self.notices.extend(other.notices);
    }
}

pub trait Projection {
    /// The events of the decider this projection reads.
    type Event;
    /// The tables it writes (all rebuilt from the log).
    const TABLES: &'static [&'static str];

    /// Applies one event that the sequence rule admitted.
    #[allow(async_fn_in_trait)]
    async fn apply(
        tx: &mut Transaction<'_, Postgres>,
        envelope: &EventEnvelope,
        event: &Self::Event,
    ) -> Result<Effects, sqlx::Error>;
}

/// Every table the projections write, each projection's [`Projection::TABLES`]
/// (what `tidings rebuild` rebuilds, with the projector's own). A projection
/// added to [`apply`] adds its line here too.
pub fn tables() -> Vec<&'static str> {
    [
        Accounts::TABLES,
        Posts::TABLES,
        Follows::TABLES,
        Inbox::TABLES,
        Media::TABLES,
        Rooms::TABLES,
        Webhooks::TABLES,
    ]
    .concat()
}

/// Applies an admitted event with the projection of its decider.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    envelope: &EventEnvelope,
    event: &DomainEvent,
) -> Result<Effects, sqlx::Error> {
    match event {
        DomainEvent::Account(event) => Accounts::apply(tx, envelope, event).await,
        // Claims guard uniqueness for the deciders; no read model shows them.
        DomainEvent::Claim(_) => Ok(Effects::default()),
        DomainEvent::Post(event) => Posts::apply(tx, envelope, event).await,
        DomainEvent::Follow(event) => Follows::apply(tx, envelope, event).await,
        DomainEvent::Inbox(event) => Inbox::apply(tx, envelope, event).await,
        DomainEvent::Media(event) => Media::apply(tx, envelope, event).await,
        DomainEvent::Room(event) => Rooms::apply(tx, envelope, event).await,
        DomainEvent::Webhook(event) => Webhooks::apply(tx, envelope, event).await,
    }
}

//! The hub: one task that owns every subscription of this gateway.
//!
//! Sessions and the follower of `tidings.updates` talk to it over a
//! `Command` channel; it hands each update to the sessions subscribed to its
//! channel. A session whose queue is full is too slow to keep up: the hub
//! drops it and tells it so, and the client resumes with `since`.
//!
//! Where the projector runs in the same process, updates also come straight
//! from its commits, ahead of the relay and the topic
//! ([`tidings_schemas::shortcut`]); from projectors of other processes they
//! come over Redis pub/sub ([`follow_updates`]), also
//! ahead of the topic. So an update may come more than once: the hub
//! passes each channel's updates on only past the highest `seq` it passed
//! on, and each session fills whatever gap it sees from the outbox.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::frames::ServerFrame;
use crate::socket::Encoded;

use rdkafka::consumer::StreamConsumer;
use rdkafka::Message;
use tidings_projections::outbox::Update;
use tidings_schemas::kafka::{assign_at_end, KafkaSettings};
use tidings_schemas::shortcut::Shortcut;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Updates handed to one session and not yet taken by it. A session takes
/// them as they come (its writes queue without waiting: see
/// [`crate::socket`]), so this fills only when its task cannot keep up;
/// then it counts as too slow.
pub const SESSION_QUEUE: usize = 512;
/// Updates from the topic and the projector waiting for the hub; past it
/// their readers wait (the topic's consumer reads no further meanwhile).
/// Commands of sessions come over an unbounded channel: each session's
/// frames are rate limited, and its subscriptions capped.
pub const DELIVERY_QUEUE: usize = 4096;
/// Ephemeral frames (presence, typing) queued for one session; past this
/// they are dropped for it: they carry no `seq` to resume from, and the
/// next change says the state again.
pub const SIGNAL_QUEUE: usize = 64;
/// How long a `typing: true` lasts without a refresh: past it the hub
/// tells the channel's subscribers `typing: false` itself, so a sender that
/// vanished (or whose gateway died) does not leave anyone typing forever.
pub const TYPING_TTL: Duration = Duration::from_secs(5);

/// An update as the hub hands it to sessions: one copy for all of them,
/// its frame encoded once, by the first session that sends it (in a room of
/// 10,000 subscribers, one serialization instead of 10,000, and no copy of
/// the update per session).
#[derive(Debug)]
pub struct Outgoing {
    pub update: Update,
    frame: OnceLock<Encoded>,
}

impl Outgoing {
    pub fn new(update: Update) -> Arc<Self> {
        Arc::new(Outgoing {
            update,
            frame: OnceLock::new(),
        })
    }

    /// The update's `event` frame.
    pub fn frame(&self) -> &Encoded {
        self.frame
            .get_or_init(|| ServerFrame::event_of(&self.update))
    }
}

/// An ephemeral frame for the subscribers of `channel`, about `user_id`
/// (whose own sessions skip it).
#[derive(Debug, Clone)]
pub struct Signal {
    pub channel: String,
    pub user_id: Uuid,
    pub frame: ServerFrame,
}

pub enum Command {
    Subscribe {
        session: Uuid,
        channel: String,
        queue: mpsc::Sender<Arc<Outgoing>>,
        signals: mpsc::Sender<Signal>,
        too_slow: CancellationToken,
    },
    Unsubscribe {
        session: Uuid,
        channel: String,
    },
    Leave {
        session: Uuid,
    },
    Deliver(Update),
    Signal(Signal),
}

struct Subscriber {
    queue: mpsc::Sender<Arc<Outgoing>>,
    signals: mpsc::Sender<Signal>,
    too_slow: CancellationToken,
}

/// The handle sessions use.
#[derive(Clone)]
pub struct Hub {
    commands: mpsc::UnboundedSender<Command>,
    /// Updates for the hub, from any source: the topic, the projector of
    /// this process, the projectors of others (over Redis).
    pub deliveries: mpsc::Sender<Update>,
    /// Cancelled when the gateway shuts down: sessions close with "going
    /// away" so their clients resume on another gateway.
    pub shutdown: CancellationToken,
}

impl Hub {
    /// Starts the hub, the follower of `tidings.updates` and the reader of
    /// the projector's shortcut.
    pub async fn start(
        kafka: &KafkaSettings,
        early: Shortcut<Update>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = kafka.consumer(None).create()?;
        let (topic, partitions) = (kafka.topics().updates, kafka.partitions);
        // Live from now on; what came before is the outbox's to replay.
        let consumer = tokio::task::spawn_blocking(move || -> anyhow::Result<StreamConsumer> {
            assign_at_end(&consumer, &topic, partitions)?;
            Ok(consumer)
        })
        .await??;
        let (tx, rx) = mpsc::unbounded_channel();
        let (deliver, deliveries) = mpsc::channel(DELIVERY_QUEUE);
        tokio::spawn(run(rx, deliveries));
        tokio::spawn(follow(consumer, deliver.clone(), shutdown.clone()));
        let (mut early, hub) = (early.open(), deliver.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let update = tokio::select! {
                    _ = stop.cancelled() => return,
                    update = early.recv() => update,
                };
                let Some(update) = update else { return };
                if hub.send(update).await.is_err() {
                    return;
                }
            }
        });
        Ok(Hub {
            commands: tx,
            deliveries: deliver,
            shutdown,
        })
    }

    pub fn send(&self, command: Command) {
        // The hub outlives every session; a send fails only at shutdown.
        let _ = self.commands.send(command);
    }
}

/// The subscribers of one channel, and the highest `(epoch, seq)` passed on
/// to them.
#[derive(Default)]
struct Subscribers {
    sessions: HashMap<Uuid, Subscriber>,
    passed: (i64, i64),
}

async fn run(
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut deliveries: mpsc::Receiver<Update>,
) {
    let mut channels: HashMap<String, Subscribers> = HashMap::new();
    // Who is typing where, until when: only on channels with subscribers
    // here, each entry gone at its deadline, so it stays small.
    let mut typing: HashMap<(String, Uuid), Instant> = HashMap::new();
    // Subscriptions held, for `/metrics`.
    let mut held: usize = 0;
    loop {
        metrics::gauge!("tidings_ws_subscriptions").set(held as f64);
        metrics::gauge!("tidings_ws_channels").set(channels.len() as f64);
        let next = typing.values().min().copied();
        let command = tokio::select! {
            // Sessions' commands first: a session subscribes, then reads
            // its channel's head; an update committed after that read must
            // find the subscription in place, so a command sent before a
            // delivery is taken before it.
            biased;
            command = commands.recv() => match command {
                Some(command) => command,
                None => return,
            },
            Some(update) = deliveries.recv() => Command::Deliver(update),
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                let lapsed: Vec<(String, Uuid)> = typing
                    .iter()
                    .filter(|(_, &until)| until <= now)
                    .map(|(key, _)| key.clone())
                    .collect();
                for (channel, user_id) in lapsed {
                    typing.remove(&(channel.clone(), user_id));
                    let frame = ServerFrame::Typing {
                        channel: channel.clone(),
                        user_id,
                        is_typing: false,
                    };
                    held -= signal(&mut channels, Signal { channel, user_id, frame });
                }
                continue;
            }
        };
        match command {
            Command::Subscribe {
                session,
                channel,
                queue,
                signals,
                too_slow,
            } => {
                let subscriber = Subscriber {
                    queue,
                    signals,
                    too_slow,
                };
                let sessions = &mut channels.entry(channel).or_default().sessions;
                if sessions.insert(session, subscriber).is_none() {
                    held += 1;
                }
            }
            Command::Signal(sent) => {
                if let ServerFrame::Typing { is_typing, .. } = sent.frame {
                    let key = (sent.channel.clone(), sent.user_id);
                    if is_typing && channels.contains_key(&sent.channel) {
                        typing.insert(key, Instant::now() + TYPING_TTL);
                    } else {
                        typing.remove(&key);
                    }
                }
                held -= signal(&mut channels, sent);
            }
            Command::Unsubscribe { session, channel } => {
                if let Some(subscribers) = channels.get_mut(&channel) {
                    if subscribers.sessions.remove(&session).is_some() {
                        held -= 1;
                    }
                    if subscribers.sessions.is_empty() {
                        channels.remove(&channel);
                    }
                }
            }
            Command::Leave { session } => {
                channels.retain(|_, subscribers| {
                    if subscribers.sessions.remove(&session).is_some() {
                        held -= 1;
                    }
                    !subscribers.sessions.is_empty()
                });
            }
            Command::Deliver(update) => {
                let Some(subscribers) = channels.get_mut(&update.channel) else {
                    continue;
                };
                // A second copy (shortcut and topic), or one older than what
                // went out: the sessions have it, or fill it from the outbox.
                let (epoch, seq) = subscribers.passed;
                if update.epoch == epoch && update.seq <= seq {
                    continue;
                }
                subscribers.passed = (update.epoch, update.seq);
                let update = Outgoing::new(update);
                let before = subscribers.sessions.len();
                subscribers.sessions.retain(|_, subscriber| {
                    match subscriber.queue.try_send(update.clone()) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            subscriber.too_slow.cancel();
                            false
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    }
                });
                held -= before - subscribers.sessions.len();
                if subscribers.sessions.is_empty() {
                    channels.remove(&update.update.channel);
                }
            }
        }
    }
}

/// Hands an ephemeral frame to the subscribers of its channel; one whose
/// signal queue is full misses it (see [`SIGNAL_QUEUE`]).
/// Returns how many subscriptions it found gone.
fn signal(channels: &mut HashMap<String, Subscribers>, signal: Signal) -> usize {
    let Some(subscribers) = channels.get_mut(&signal.channel) else {
        return 0;
    };
    let before = subscribers.sessions.len();
    subscribers.sessions.retain(|_, subscriber| {
        !matches!(
            subscriber.signals.try_send(signal.clone()),
            Err(mpsc::error::TrySendError::Closed(_))
        )
    });
    let gone = before - subscribers.sessions.len();
    if subscribers.sessions.is_empty() {
        channels.remove(&signal.channel);
    }
    gone
}

/// Follows the updates the projectors publish on Redis
/// ([`tidings_projections::cache::updates_channel`]) and hands them to the
/// hub: a gateway in another process than the projector sees a commit
/// within a Redis round trip instead of a fetch of `tidings.updates` (which
/// stays the record: whatever is missed here comes from it, or from the
/// outbox when a session sees a gap).
pub async fn follow_updates(presence: crate::presence::Presence, hub: Hub) {
    let channel = presence.updates_channel();
    crate::presence::listen(&presence, &channel, &hub.shutdown.clone(), |payload| {
        let hub = &hub;
        async move {
            let Ok(updates) = serde_json::from_slice::<Vec<Update>>(&payload) else {
                tracing::warn!("unreadable published updates skipped");
                return true;
            };
            for update in updates {
                if hub.deliveries.send(update).await.is_err() {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

async fn follow(consumer: StreamConsumer, hub: mpsc::Sender<Update>, shutdown: CancellationToken) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                match serde_json::from_slice::<Update>(message.payload().unwrap_or_default()) {
                    Ok(update) => {
                        if hub.send(update).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "unreadable update skipped"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "reading updates");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Session {
        id: Uuid,
        updates: mpsc::Receiver<Arc<Outgoing>>,
        queue: mpsc::Sender<Arc<Outgoing>>,
        signals: mpsc::Sender<Signal>,
        received: mpsc::Receiver<Signal>,
        too_slow: CancellationToken,
    }

    fn session(capacity: usize) -> Session {
        let (queue, updates) = mpsc::channel(capacity);
        let (signals, received) = mpsc::channel(capacity);
        Session {
            id: Uuid::new_v4(),
            updates,
            queue,
            signals,
            received,
            too_slow: CancellationToken::new(),
        }
    }

    fn hub() -> mpsc::UnboundedSender<Command> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (deliver, deliveries) = mpsc::channel(DELIVERY_QUEUE);
        tokio::spawn(async move {
            // Kept open for as long as the hub runs.
            let _deliver = deliver;
            run(rx, deliveries).await
        });
        tx
    }

    fn subscribe(hub: &mpsc::UnboundedSender<Command>, session: &Session, channel: &str) {
        hub.send(Command::Subscribe {
            session: session.id,
            channel: channel.into(),
            queue: session.queue.clone(),
            signals: session.signals.clone(),
            too_slow: session.too_slow.clone(),
        })
        .unwrap();
    }

    fn update(channel: &str, seq: i64) -> Update {
        Update {
            channel: channel.into(),
            seq,
            epoch: 1,
            event: "profile.updated".into(),
            data: serde_json::json!({}),
        }
    }

    /// The next update a session receives, if one comes soon.
    async fn next(session: &mut Session) -> Option<i64> {
        tokio::time::timeout(Duration::from_millis(100), session.updates.recv())
            .await
            .ok()
            .flatten()
            .map(|u| u.update.seq)
    }

    #[tokio::test]
    async fn an_update_reaches_the_subscribers_of_its_channel_only() {
        let hub = hub();
        let (mut a, mut b, mut other) = (session(8), session(8), session(8));
        subscribe(&hub, &a, "user:1");
        subscribe(&hub, &b, "user:1");
        subscribe(&hub, &other, "user:2");
        hub.send(Command::Deliver(update("user:1", 1))).unwrap();
        assert_eq!(next(&mut a).await, Some(1));
        assert_eq!(next(&mut b).await, Some(1));
        assert_eq!(next(&mut other).await, None);
    }

    #[tokio::test]
    async fn a_subscription_sent_before_an_update_is_in_place_for_it() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (deliver, deliveries) = mpsc::channel(DELIVERY_QUEUE);
        tokio::spawn(run(rx, deliveries));
        // Both wait for the hub at once, the subscription sent first (the
        // test's runtime has one thread: the hub runs only when it yields).
        for n in 0..20 {
            let channel = format!("room:{n}");
            let mut session = session(8);
            subscribe(&tx, &session, &channel);
            deliver.try_send(update(&channel, 1)).unwrap();
            assert_eq!(next(&mut session).await, Some(1), "{channel}");
        }
    }

    #[tokio::test]
    async fn an_update_that_comes_twice_is_passed_on_once() {
        let hub = hub();
        let mut a = session(8);
        subscribe(&hub, &a, "user:1");
        for seq in [1, 2, 1, 2, 3] {
            hub.send(Command::Deliver(update("user:1", seq))).unwrap();
        }
        for seq in 1..=3 {
            assert_eq!(next(&mut a).await, Some(seq));
        }
        assert_eq!(next(&mut a).await, None);
    }

    #[tokio::test]
    async fn a_repeated_subscribe_delivers_once() {
        let hub = hub();
        let mut a = session(8);
        subscribe(&hub, &a, "user:1");
        subscribe(&hub, &a, "user:1");
        hub.send(Command::Deliver(update("user:1", 1))).unwrap();
        assert_eq!(next(&mut a).await, Some(1));
        assert_eq!(next(&mut a).await, None);
    }

    #[tokio::test]
    async fn unsubscribed_and_departed_sessions_receive_nothing() {
        let hub = hub();
        let (mut a, mut b) = (session(8), session(8));
        subscribe(&hub, &a, "user:1");
        subscribe(&hub, &a, "room:1");
        subscribe(&hub, &b, "room:1");
        hub.send(Command::Unsubscribe {
            session: a.id,
            channel: "user:1".into(),
        })
        .unwrap();
        hub.send(Command::Leave { session: b.id }).unwrap();
        hub.send(Command::Deliver(update("user:1", 1))).unwrap();
        hub.send(Command::Deliver(update("room:1", 1))).unwrap();
        assert_eq!(next(&mut a).await, Some(1), "room:1 still reaches a");
        assert_eq!(next(&mut a).await, None);
        assert_eq!(next(&mut b).await, None);
    }

    #[tokio::test]
    async fn a_session_that_cannot_keep_up_is_told_and_dropped() {
        let hub = hub();
        let (mut slow, mut quick) = (session(2), session(8));
        subscribe(&hub, &slow, "room:1");
        subscribe(&hub, &quick, "room:1");
        for seq in 1..=3 {
            hub.send(Command::Deliver(update("room:1", seq))).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(1), slow.too_slow.cancelled())
            .await
            .expect("the slow session is told");
        assert!(!quick.too_slow.is_cancelled());
        assert_eq!(next(&mut slow).await, Some(1));
        assert_eq!(next(&mut slow).await, Some(2));
        // Dropped: once it has room again, nothing more comes to it.
        hub.send(Command::Deliver(update("room:1", 4))).unwrap();
        assert_eq!(next(&mut slow).await, None);
        for seq in 1..=4 {
            assert_eq!(next(&mut quick).await, Some(seq));
        }
    }

    #[tokio::test]
    async fn a_typing_not_refreshed_lapses_into_not_typing() {
        let hub = hub();
        let mut a = session(8);
        subscribe(&hub, &a, "room:1");
        let user_id = Uuid::new_v4();
        let typing = |is_typing| {
            Command::Signal(Signal {
                channel: "room:1".into(),
                user_id,
                frame: ServerFrame::Typing {
                    channel: "room:1".into(),
                    user_id,
                    is_typing,
                },
            })
        };
        hub.send(typing(true)).unwrap();
        let first = a.received.recv().await.unwrap();
        assert!(matches!(
            first.frame,
            ServerFrame::Typing {
                is_typing: true,
                ..
            }
        ));
        tokio::time::sleep(TYPING_TTL - Duration::from_millis(100)).await;
        assert!(a.received.try_recv().is_err(), "not before its time");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lapsed = a.received.recv().await.unwrap();
        assert!(matches!(
            lapsed.frame,
            ServerFrame::Typing {
                is_typing: false,
                ..
            }
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(a.received.try_recv().is_err(), "once");
    }
}

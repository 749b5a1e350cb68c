//! In-process shortcuts past a log hop.
//!
//! A hop through a topic costs about the reading consumer's fetch wait (the
//! broker holds a fetch that long before it answers; the README's
//! Performance section has the figures), and a write crosses several. When the role that writes a record
//! and the role that reads it run in one process, the writer also hands the
//! reader a copy of the record as the broker acknowledged it: its partition
//! and offset. The topic stays the record of truth:
//!
//! - a reader takes an early copy only where it continues exactly what it
//!   has taken (its partition's next offset); a copy that would leave a hole
//!   waits in a small buffer for the records before it, and is dropped once
//!   the log has delivered it ([`Merge`]);
//! - a shortcut is bounded and never blocks its writer: a full or closed one
//!   drops the copy, and the reader gets the record from the log a fetch
//!   wait later ([`Shortcut`]).
//!
//! So whatever the shortcut loses, reorders or repeats, the reader sees each
//! offset once, in order, with the bytes the log holds there.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::sync::mpsc;

/// Copies a shortcut holds before it drops: a reader that far behind reads
/// the log anyway.
pub const SHORTCUT_CAPACITY: usize = 4096;

/// Early copies a [`Merge`] keeps waiting for the records before them.
const EARLY_KEPT: usize = 4096;

/// A bounded, lossy, in-process channel from a writer of a topic to its
/// reader. Cloned by both sides; the reader [`open`](Shortcut::open)s it
/// each time it starts, the writer [`offer`](Shortcut::offer)s copies.
pub struct Shortcut<T>(Arc<Mutex<Option<mpsc::Sender<T>>>>);

impl<T> Clone for Shortcut<T> {
    fn clone(&self) -> Self {
        Shortcut(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Shortcut<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shortcut")
            .field("open", &self.is_open())
            .finish()
    }
}

impl<T> Default for Shortcut<T> {
    fn default() -> Self {
        Shortcut(Arc::new(Mutex::new(None)))
    }
}

impl<T> Shortcut<T> {
    /// Starts receiving copies (a restarted reader replaces its earlier
    /// receiver).
    pub fn open(&self) -> mpsc::Receiver<T> {
        let (tx, rx) = mpsc::channel(SHORTCUT_CAPACITY);
        *self.0.lock().expect("shortcut lock") = Some(tx);
        rx
    }

    /// Hands a copy to the reader, if one listens and has room; otherwise
    /// the copy is dropped and the reader takes the record from the log.
    /// Says whether the reader got it.
    pub fn offer(&self, item: T) -> bool {
        let guard = self.0.lock().expect("shortcut lock");
        let Some(tx) = guard.as_ref() else {
            return false;
        };
        let taken = tx.try_send(item).is_ok();
        if !taken {
            metrics::counter!("tidings_shortcut_dropped_total").increment(1);
        }
        taken
    }

    /// Whether a reader listens: a writer can spare itself building copies.
    pub fn is_open(&self) -> bool {
        self.0
            .lock()
            .expect("shortcut lock")
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }
}

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Fetched from the topic: the truth, in offset order per partition.
    Log,
    /// Handed over by a writer in this process.
    Shortcut,
}

/// Turns records from the log and early copies from a shortcut into one
/// stream per partition, each offset once and in order.
///
/// A partition's next offset is known once the reader says where it stands
/// ([`Merge::expect`]) or a record of the log arrives. Until then only the
/// log is taken: a copy cannot tell what came before it.
#[derive(Default)]
pub struct Merge {
    next: HashMap<i32, i64>,
    early: BTreeMap<(i32, i64), OwnedMessage>,
}

impl Merge {
    /// Tells where the reader stands on `partition` (it has everything
    /// before `next`). Only ever moves forward.
    pub fn expect(&mut self, partition: i32, next: i64) {
        let at = self.next.entry(partition).or_insert(next);
        *at = (*at).max(next);
        self.early
            .retain(|&(p, offset), _| p != partition || offset >= next);
    }

    /// Forgets a partition the reader gave up (a rebalance took it).
    pub fn forget(&mut self, partition: i32) {
        self.next.remove(&partition);
        self.early.retain(|&(p, _), _| p != partition);
    }

    /// The next offset the reader takes on `partition`, if known.
    pub fn next(&self, partition: i32) -> Option<i64> {
        self.next.get(&partition).copied()
    }

    /// Sorts `records` into what the reader takes now, in order per
    /// partition; what is already taken is dropped, and copies ahead of a
    /// hole wait for it.
    pub fn admit(&mut self, records: Vec<(Origin, OwnedMessage)>) -> Vec<OwnedMessage> {
        self.admit_with_origin(records)
            .into_iter()
            .map(|(_, message)| message)
            .collect()
    }

    /// [`Merge::admit`], saying of each record taken where it came from.
    pub fn admit_with_origin(
        &mut self,
        records: Vec<(Origin, OwnedMessage)>,
    ) -> Vec<(Origin, OwnedMessage)> {
        let mut incoming: BTreeMap<(i32, i64), (Origin, OwnedMessage)> = BTreeMap::new();
        for (origin, message) in records {
            let key = (message.partition(), message.offset());
            match incoming.get(&key) {
                // The log's copy wins over an early one of the same offset.
                Some((Origin::Log, _)) => {}
                _ => {
                    incoming.insert(key, (origin, message));
                }
            }
        }
        // Early copies of earlier rounds join in where they now fit.
        let early = std::mem::take(&mut self.early);
        for (key, message) in early {
            incoming.entry(key).or_insert((Origin::Shortcut, message));
        }
        let mut taken = Vec::new();
        let mut early_taken = 0u64;
        for ((partition, offset), (origin, message)) in incoming {
            match (self.next.get(&partition).copied(), origin) {
                (Some(next), _) if offset < next => {}
                (Some(next), _) if offset == next => {
                    self.next.insert(partition, offset + 1);
                    early_taken += u64::from(origin == Origin::Shortcut);
                    taken.push((origin, message));
                }
                // The log is the truth: a jump in it (records removed by
                // retention, say) is where the partition now goes on.
                (_, Origin::Log) => {
                    self.next.insert(partition, offset + 1);
                    taken.push((Origin::Log, message));
                }
                (_, Origin::Shortcut) => {
                    if self.early.len() < EARLY_KEPT {
                        self.early.insert((partition, offset), message);
                    }
                }
            }
        }
        // How many records skipped a fetch wait: operators (and a test)
        // see whether the roles of a process hand records over at all.
        metrics::counter!("tidings_shortcut_taken_total").increment(early_taken);
        taken
    }

    /// Early copies waiting for the records before them.
    pub fn waiting(&self) -> usize {
        self.early.len()
    }
}

/// A record as the broker acknowledged it, for a shortcut.
pub fn record(
    topic: &str,
    partition: i32,
    offset: i64,
    key: &[u8],
    payload: &[u8],
) -> OwnedMessage {
    OwnedMessage::new(
        Some(payload.to_vec()),
        Some(key.to_vec()),
        topic.to_owned(),
        rdkafka::Timestamp::NotAvailable,
        partition,
        offset,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(partition: i32, offset: i64) -> OwnedMessage {
        record("t", partition, offset, b"k", offset.to_string().as_bytes())
    }

    fn offsets(taken: &[OwnedMessage]) -> Vec<(i32, i64)> {
        taken.iter().map(|m| (m.partition(), m.offset())).collect()
    }

    #[test]
    fn a_copy_is_taken_only_once_the_reader_knows_where_it_stands() {
        let mut merge = Merge::default();
        let taken = merge.admit(vec![(Origin::Shortcut, message(0, 5))]);
        assert!(taken.is_empty());
        let taken = merge.admit(vec![(Origin::Log, message(0, 5))]);
        assert_eq!(offsets(&taken), [(0, 5)]);
        let taken = merge.admit(vec![(Origin::Shortcut, message(0, 6))]);
        assert_eq!(offsets(&taken), [(0, 6)]);
    }

    #[test]
    fn each_offset_is_taken_once_whichever_copy_comes_first() {
        let mut merge = Merge::default();
        merge.expect(0, 0);
        let taken = merge.admit(vec![
            (Origin::Shortcut, message(0, 0)),
            (Origin::Log, message(0, 0)),
            (Origin::Shortcut, message(0, 1)),
        ]);
        assert_eq!(offsets(&taken), [(0, 0), (0, 1)]);
        let taken = merge.admit(vec![
            (Origin::Log, message(0, 1)),
            (Origin::Log, message(0, 2)),
        ]);
        assert_eq!(offsets(&taken), [(0, 2)]);
    }

    #[test]
    fn a_copy_ahead_of_a_hole_waits_for_it() {
        let mut merge = Merge::default();
        merge.expect(0, 10);
        assert!(merge
            .admit(vec![(Origin::Shortcut, message(0, 12))])
            .is_empty());
        assert!(merge
            .admit(vec![(Origin::Shortcut, message(0, 11))])
            .is_empty());
        assert_eq!(merge.waiting(), 2);
        let taken = merge.admit(vec![(Origin::Log, message(0, 10))]);
        assert_eq!(offsets(&taken), [(0, 10), (0, 11), (0, 12)]);
        assert_eq!(merge.waiting(), 0);
    }

    #[test]
    fn partitions_are_merged_apart() {
        let mut merge = Merge::default();
        merge.expect(0, 3);
        merge.expect(1, 7);
        let taken = merge.admit(vec![
            (Origin::Shortcut, message(1, 7)),
            (Origin::Shortcut, message(0, 4)),
            (Origin::Shortcut, message(0, 3)),
        ]);
        assert_eq!(offsets(&taken), [(0, 3), (0, 4), (1, 7)]);
    }

    #[test]
    fn a_forgotten_partition_takes_copies_again_only_after_the_log() {
        let mut merge = Merge::default();
        merge.expect(0, 3);
        merge.admit(vec![(Origin::Shortcut, message(0, 9))]);
        merge.forget(0);
        assert_eq!(merge.waiting(), 0);
        assert!(merge
            .admit(vec![(Origin::Shortcut, message(0, 3))])
            .is_empty());
        assert_eq!(merge.next(0), None);
    }

    #[test]
    fn the_reader_moving_on_drops_what_it_passed() {
        let mut merge = Merge::default();
        merge.expect(0, 0);
        merge.admit(vec![(Origin::Shortcut, message(0, 4))]);
        merge.expect(0, 5);
        assert_eq!(merge.waiting(), 0);
        merge.expect(0, 2);
        assert_eq!(merge.next(0), Some(5), "it never moves back");
    }

    #[tokio::test]
    async fn a_shortcut_without_a_reader_or_room_drops() {
        let shortcut: Shortcut<u32> = Shortcut::default();
        shortcut.offer(1);
        assert!(!shortcut.is_open());
        let mut rx = shortcut.open();
        for i in 0..(SHORTCUT_CAPACITY as u32 + 10) {
            shortcut.offer(i);
        }
        let mut received = 0;
        while rx.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, SHORTCUT_CAPACITY);
    }
}

//! The sequence rule (DESIGN.md): the one rule every reader of the log
//! applies — decider rebuild, projector, replay — so that all of them keep the
//! same events and skip the same others.
//!
//! An event applies when its aggregate `sequence` is one more than the
//! aggregate's version **and** its `previous` names the event that applied
//! last (none for an aggregate's first event). The events of an aggregate
//! form a chain, and an event only joins the chain at the place it was decided
//! for:
//! - a second writer (a zombie owner after a rebalance) writes sequences that
//!   are already taken, so its events are skipped wherever they stand;
//! - a command decided in a batch on top of an earlier command of the same
//!   batch names that command's last event as `previous`: if the earlier one
//!   loses, the later one cannot slip in after the winner;
//! - a command's own events chain one to the next, so once one of them is
//!   skipped the rest of the command is skipped too: a command is never half
//!   applied.
//!
//! Events written before the chain existed carry no `previous`; they are held
//! to the sequence alone.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A reader's position in one aggregate's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub version: u64,
    /// The id of the event that applied last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<Uuid>,
}

impl Cursor {
    /// Whether an event at `sequence` that follows `previous` applies;
    /// advances the cursor when it does.
    pub fn admit(&mut self, sequence: u64, event_id: Uuid, previous: Option<Uuid>) -> bool {
        if sequence != self.version + 1 {
            return false;
        }
        let legacy = previous.is_none() && sequence > 1;
        if !legacy && previous != self.last_event {
            return false;
        }
        self.version = sequence;
        self.last_event = Some(event_id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Feeds `(sequence, event, previous)` triples (0 = no previous) and
    /// returns which applied.
    fn run(events: &[(u64, u128, u128)]) -> Vec<bool> {
        let mut cursor = Cursor::default();
        events
            .iter()
            .map(|&(s, e, p)| cursor.admit(s, id(e), (p != 0).then(|| id(p))))
            .collect()
    }

    #[test]
    fn a_chain_applies_in_order() {
        assert_eq!(run(&[(1, 1, 0), (2, 2, 1), (3, 3, 2)]), [true, true, true]);
    }

    #[test]
    fn the_first_event_at_a_sequence_wins_and_the_second_is_skipped() {
        assert_eq!(run(&[(1, 1, 0), (2, 2, 1), (2, 3, 1)]), [true, true, false]);
    }

    #[test]
    fn a_losing_command_is_skipped_whole() {
        // X wins sequence 1; Y wrote 1 and 2 on the same empty state.
        assert_eq!(
            run(&[(1, 10, 0), (1, 20, 0), (2, 21, 20)]),
            [true, false, false]
        );
    }

    #[test]
    fn a_command_decided_on_top_of_a_loser_loses_too() {
        // A (event 20) and then B (event 30, on top of A) were decided in one
        // batch; a zombie's event 10 took sequence 1 first.
        assert_eq!(
            run(&[(1, 10, 0), (1, 20, 0), (2, 30, 20)]),
            [true, false, false]
        );
    }

    #[test]
    fn interleaved_writers_keep_the_first_chain() {
        assert_eq!(
            run(&[(1, 10, 0), (1, 20, 0), (2, 11, 10), (2, 21, 20)]),
            [true, false, true, false]
        );
    }

    #[test]
    fn a_duplicate_of_an_applied_event_is_skipped() {
        assert_eq!(
            run(&[(1, 10, 0), (1, 10, 0), (2, 11, 10), (2, 11, 10)]),
            [true, false, true, false]
        );
    }

    #[test]
    fn a_gap_is_skipped() {
        assert_eq!(run(&[(2, 2, 1), (1, 1, 0)]), [false, true]);
    }

    #[test]
    fn events_from_before_the_chain_are_held_to_the_sequence_alone() {
        assert_eq!(run(&[(1, 1, 0), (2, 2, 0), (2, 3, 0)]), [true, true, false]);
    }
}

//! The sequence rule (DESIGN.md): the one rule every reader of the log
//! applies — decider rebuild, projector, replay — so that all of them keep the
//! same events and skip the same others.
//!
//! An event applies when its aggregate `sequence` is one more than the
//! aggregate's version. A second writer for the same aggregate (a zombie owner after a
//! rebalance) writes sequences that are already taken, so its events are
//! skipped wherever they stand in the log. One more clause keeps a command
//! whole: once an event of a command is skipped as a conflict, the later
//! events of that same command are skipped too, even if their sequence happens
//! to fit after the winner's.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How many losing commands an aggregate remembers; a command's events are
/// contiguous in the log, so only the most recent few can still be running.
const LOST_COMMANDS_KEPT: usize = 16;

/// A reader's position in one aggregate's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_commands: Vec<Uuid>,
}

impl Cursor {
    /// Whether the event applies; advances the cursor when it does.
    pub fn admit(&mut self, sequence: u64, command_id: Uuid) -> bool {
        if sequence == self.version + 1 && !self.lost_commands.contains(&command_id) {
            self.version = sequence;
            self.last_command = Some(command_id);
            return true;
        }
        // A copy of the command that just applied (the same command decided
        // again by a zombie) is a duplicate, not a loser.
        if self.last_command != Some(command_id) && !self.lost_commands.contains(&command_id) {
            if self.lost_commands.len() == LOST_COMMANDS_KEPT {
                self.lost_commands.remove(0);
            }
            self.lost_commands.push(command_id);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Feeds `(sequence, command)` pairs and returns which applied.
    fn run(events: &[(u64, u128)]) -> Vec<bool> {
        let mut cursor = Cursor::default();
        events
            .iter()
            .map(|&(s, c)| cursor.admit(s, id(c)))
            .collect()
    }

    #[test]
    fn events_in_sequence_apply() {
        assert_eq!(run(&[(1, 1), (2, 2), (3, 3)]), [true, true, true]);
    }

    #[test]
    fn the_first_event_at_a_sequence_wins_and_the_second_is_skipped() {
        assert_eq!(run(&[(1, 1), (2, 2), (2, 3)]), [true, true, false]);
    }

    #[test]
    fn a_losing_command_is_skipped_whole() {
        // X wins sequence 1; Y wrote 1 and 2 on the same stale state.
        assert_eq!(run(&[(1, 10), (1, 20), (2, 20)]), [true, false, false]);
    }

    #[test]
    fn interleaved_writers_keep_the_first_command_whole() {
        assert_eq!(
            run(&[(1, 10), (1, 20), (2, 10), (2, 20)]),
            [true, false, true, false]
        );
    }

    #[test]
    fn a_duplicate_of_the_running_command_does_not_stop_its_next_event() {
        // A zombie decided the same command again: same command, same events.
        assert_eq!(
            run(&[(1, 10), (1, 10), (2, 10), (2, 10)]),
            [true, false, true, false]
        );
    }

    #[test]
    fn a_gap_is_skipped() {
        assert_eq!(run(&[(2, 1), (1, 2)]), [false, true]);
    }
}

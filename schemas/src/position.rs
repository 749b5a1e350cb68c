//! The `position` token: how far into `tidings.events` a write reached.
//!
//! It maps each partition to the offset of the last event written there. A
//! reader has passed a position when, for every partition in it, the reader's
//! next offset is beyond that offset. On the wire it is opaque: base64url of
//! `partition:offset` pairs, so clients never parse it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(BTreeMap<i32, i64>);

#[derive(Debug, thiserror::Error)]
#[error("not a position token")]
pub struct InvalidPosition;

impl Position {
    /// Extends the position to cover an event at `offset` on `partition`.
    pub fn include(&mut self, partition: i32, offset: i64) {
        let entry = self.0.entry(partition).or_insert(offset);
        *entry = (*entry).max(offset);
    }

    pub fn merge(&mut self, other: &Position) {
        for (&partition, &offset) in &other.0 {
            self.include(partition, offset);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn partitions(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.0.iter().map(|(&p, &o)| (p, o))
    }

    /// Whether a reader whose next offset per partition is `next` has
    /// processed every event this position covers.
    pub fn reached_by(&self, next: impl Fn(i32) -> Option<i64>) -> bool {
        self.0
            .iter()
            .all(|(&partition, &offset)| next(partition).is_some_and(|n| n > offset))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain: Vec<String> = self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        f.write_str(&URL_SAFE_NO_PAD.encode(plain.join(",")))
    }
}

impl FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| InvalidPosition)?;
        let plain = String::from_utf8(bytes).map_err(|_| InvalidPosition)?;
        let mut position = Position::default();
        for pair in plain.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = pair.split_once(':').ok_or(InvalidPosition)?;
            let partition: i32 = p.parse().map_err(|_| InvalidPosition)?;
            let offset: i64 = o.parse().map_err(|_| InvalidPosition)?;
            if partition < 0 || offset < 0 {
                return Err(InvalidPosition);
            }
            position.include(partition, offset);
        }
        Ok(position)
    }
}

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let token = String::deserialize(deserializer)?;
        token.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_round_trips_through_its_token() {
        let mut position = Position::default();
        position.include(3, 41);
        position.include(0, 7);
        position.include(3, 12);
        let token = position.to_string();
        assert_eq!(token.parse::<Position>().unwrap(), position);
        assert_eq!(position.partitions().collect::<Vec<_>>(), [(0, 7), (3, 41)]);
    }

    #[test]
    fn garbage_is_not_a_position() {
        assert!("%%%".parse::<Position>().is_err());
        assert!(URL_SAFE_NO_PAD.encode("1:x").parse::<Position>().is_err());
    }

    #[test]
    fn a_reader_reaches_a_position_once_past_every_offset() {
        let mut position = Position::default();
        position.include(0, 5);
        position.include(1, 9);
        assert!(!position.reached_by(|p| Some(if p == 0 { 6 } else { 9 })));
        assert!(position.reached_by(|_| Some(10)));
        assert!(!position.reached_by(|_| None));
    }
}

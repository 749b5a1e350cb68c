//! Reading the event log as an analyst does: `tidings replay` and the admin
//! API (`GET /api/admin/events`, `GET /api/admin/aggregates/…`).
//!
//! A [`LogReader`] has a consumer of its own, with partitions assigned by
//! hand: it joins no consumer group and commits nothing, so it never moves
//! the offsets or the partitions of the running roles. It reads a range of
//! `<prefix>.events` ([`Bound`]s: the start, an offset, partition offsets or
//! a time, to the end, an offset or a time), keeps the events the
//! [`Filter`] asks for, holds them to the sequence rule as every reader does
//! (an event off its aggregate's chain is skipped and counted), and hands
//! them out in the analysts' form ([`EventEnvelope::for_analysts`]: upcast
//! to the current version, personal fields left out unless asked for).
//!
//! The reader blocks (librdkafka's calls do): async callers run it on the
//! blocking pool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tidings_schemas::kafka::{KafkaSettings, ADMIN_TIMEOUT, READING_FETCH_WAIT_MS};
use tidings_schemas::{AggregateRef, AggregateType, Cursor, EventEnvelope};

/// Past an `until` time, how much later a record may still be stamped by
/// the broker and hold an event that occurred before it: the event's time
/// is taken when its command is issued, the record's when it is written.
/// A partition is read on until a record stamped this much past `until`.
pub const UNTIL_TIME_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// How long a reader waits, after it opened, before it takes a quiet poll
/// for the end of its partitions (the first fetches may not be back yet).
const QUIET_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// One end of a range of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// `start`: each partition's first record still in the log.
    Start,
    /// `end`: each partition's end as the read begins.
    End,
    /// An offset, the same in every partition (`until` excludes it).
    Offset(i64),
    /// Offsets per partition, `0:120,1:98` (a partition left out: its
    /// start, or its end for `until`).
    Offsets(BTreeMap<i32, i64>),
    /// An instant, compared with the events' `occurred_at` (`from` includes
    /// it, `until` too).
    Time(DateTime<Utc>),
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Start => f.write_str("start"),
            Bound::End => f.write_str("end"),
            Bound::Offset(offset) => write!(f, "{offset}"),
            Bound::Offsets(offsets) => {
                let parts: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                f.write_str(&parts.join(","))
            }
            Bound::Time(at) => {
                f.write_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
        }
    }
}

impl FromStr for Bound {
    type Err = String;

    /// `start`, `end`, an offset (`1200`), partition offsets (`0:12,3:40`),
    /// an RFC 3339 time (`2026-11-30T12:00:00Z`) or a date (`2026-11-30`,
    /// midnight UTC).
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text {
            "start" | "beginning" => return Ok(Bound::Start),
            "end" => return Ok(Bound::End),
            _ => {}
        }
        if let Ok(offset) = text.parse::<i64>() {
            return if offset >= 0 {
                Ok(Bound::Offset(offset))
            } else {
                Err(format!("{text}: an offset is 0 or more"))
            };
        }
        if let Ok(at) = DateTime::parse_from_rfc3339(text) {
            return Ok(Bound::Time(at.with_timezone(&Utc)));
        }
        if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(Bound::Time(
                day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc(),
            ));
        }
        let mut offsets = BTreeMap::new();
        for part in text.split(',') {
            let parsed = part.split_once(':').and_then(|(p, o)| {
                Some((p.trim().parse::<i32>().ok()?, o.trim().parse::<i64>().ok()?))
            });
            match parsed {
                Some((partition, offset)) if partition >= 0 && offset >= 0 => {
                    offsets.insert(partition, offset);
                }
                _ => {
                    return Err(format!(
                        "{text}: expected start, end, an offset, partition:offset pairs (0:12,1:40), an RFC 3339 time or a date (YYYY-MM-DD)"
                    ))
                }
            }
        }
        Ok(Bound::Offsets(offsets))
    }
}

/// Which events of the range are kept. Empty lists keep everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event types (`post.created`): known types only.
    pub types: Vec<String>,
    pub aggregate_types: Vec<AggregateType>,
    pub aggregate_ids: Vec<String>,
}

/// Why a filter or a range cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("{0} is not an event type of Tidings (see /schemas/events/)")]
    UnknownType(String),
    #[error("{0} is not an aggregate type ({1})")]
    UnknownAggregateType(String, String),
    #[error("`from` cannot be `end`, nor `until` be `start`")]
    WrongEdge,
    #[error("partition {0} does not exist")]
    UnknownPartition(i32),
}

impl Filter {
    /// Adds an event type, if Tidings has one of that name.
    pub fn add_type(&mut self, name: &str) -> Result<(), QueryError> {
        let name = name.trim();
        if !tidings_schemas::json::events().any(|(t, _, _)| t == name) {
            return Err(QueryError::UnknownType(name.to_owned()));
        }
        if !self.types.iter().any(|t| t == name) {
            self.types.push(name.to_owned());
        }
        Ok(())
    }

    pub fn add_aggregate_type(&mut self, name: &str) -> Result<(), QueryError> {
        let kind = parse_aggregate_type(name)?;
        if !self.aggregate_types.contains(&kind) {
            self.aggregate_types.push(kind);
        }
        Ok(())
    }

    /// `<type>` or `<type>:<id>` (an id may hold `:` itself).
    pub fn add_aggregate(&mut self, spec: &str) -> Result<(), QueryError> {
        match spec.split_once(':') {
            Some((kind, id)) if !id.is_empty() => {
                self.add_aggregate_type(kind)?;
                self.aggregate_ids.push(id.to_owned());
                Ok(())
            }
            _ => self.add_aggregate_type(spec.trim_end_matches(':')),
        }
    }

    fn keeps_aggregate(&self, aggregate: &AggregateRef) -> bool {
        (self.aggregate_types.is_empty() || self.aggregate_types.contains(&aggregate.kind))
            && (self.aggregate_ids.is_empty() || self.aggregate_ids.contains(&aggregate.id))
    }

    fn keeps_type(&self, event_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == event_type)
    }
}

pub fn parse_aggregate_type(name: &str) -> Result<AggregateType, QueryError> {
    AggregateType::ALL
        .iter()
        .copied()
        .find(|kind| kind.as_str() == name.trim())
        .ok_or_else(|| {
            let known: Vec<&str> = AggregateType::ALL.iter().map(|k| k.as_str()).collect();
            QueryError::UnknownAggregateType(name.to_owned(), known.join(", "))
        })
}

/// What to read.
#[derive(Debug, Clone)]
pub struct LogQuery {
    pub from: Bound,
    pub until: Bound,
    pub filter: Filter,
    /// Keep email addresses and phone numbers (the operator asked for them).
    pub include_private: bool,
}

/// One event as an analyst reads it, and where it stands in the log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub partition: i32,
    pub offset: i64,
    /// The broker's time of the record.
    pub timestamp: Option<DateTime<Utc>>,
    pub event: EventEnvelope,
}

/// Counts of one read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Records read from the log.
    pub read: u64,
    /// Events handed out (in range, on their chains, through the filter).
    pub matched: u64,
    /// Events off their aggregate's chain (the sequence rule).
    pub skipped: u64,
    /// Records that are not event envelopes.
    pub unreadable: u64,
}

#[derive(Debug)]
struct PartitionRange {
    start: i64,
    /// The first offset not read (exclusive).
    end: i64,
    /// The offset asked for as `until`, if any: nothing at or past it.
    limit: Option<i64>,
    /// Whether `end` is where the partition ended as the read began (as
    /// opposed to an offset asked for).
    open_end: bool,
    next: i64,
    done: bool,
}

/// The reader's client context: a partition read to its end is news to
/// the reader (it asks for it, `enable.partition.eof`), not an error to log.
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            error => tracing::error!(%error, reason, "librdkafka"),
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A reader of one range of `<prefix>.events`; see the module.
pub struct LogReader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    query: LogQuery,
    partitions: BTreeMap<i32, PartitionRange>,
    /// The chain of each aggregate read, for the sequence rule.
    chains: HashMap<(AggregateType, String), Cursor>,
    /// Whether every partition is read from its first record: then an
    /// aggregate's first event must be its first (sequence 1), as for any
    /// reader; otherwise its chain is taken up where the range finds it.
    from_first_records: bool,
    opened_at: DateTime<Utc>,
    stats: ReadStats,
}

impl LogReader {
    /// Assigns the partitions of the range. Blocks on metadata requests.
    pub fn open(kafka: &KafkaSettings, query: LogQuery) -> Result<LogReader, LogError> {
        if query.from == Bound::End || query.until == Bound::Start {
            return Err(QueryError::WrongEdge.into());
        }
        for bound in [&query.from, &query.until] {
            if let Bound::Offsets(offsets) = bound {
                if let Some(p) = offsets.keys().find(|p| **p >= kafka.partitions) {
                    return Err(QueryError::UnknownPartition(*p).into());
                }
            }
        }
        let mut config = kafka.consumer(None);
        config
            .set("fetch.wait.max.ms", READING_FETCH_WAIT_MS.to_string())
            // An offset past the end (asked for, or beyond what the broker
            // reports) reads nothing rather than the whole partition again.
            .set("auto.offset.reset", "latest")
            .set("enable.partition.eof", "true")
            .set("client.id", "tidings-log-reader");
        let consumer: BaseConsumer<ReaderContext> = config.create_with_context(ReaderContext)?;
        let topic = kafka.topics().events;
        let opened_at = Utc::now();
        let mut partitions = BTreeMap::new();
        let mut from_first_records = true;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..kafka.partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, ADMIN_TIMEOUT)?;
            let start = match &query.from {
                Bound::Start | Bound::End => low,
                Bound::Offset(offset) => *offset,
                Bound::Offsets(offsets) => offsets.get(&partition).copied().unwrap_or(low),
                Bound::Time(at) => offset_at(&consumer, &topic, partition, *at).unwrap_or(low),
            }
            .max(low);
            if start > low {
                from_first_records = false;
            }
            // An offset asked for ends the partition there; one at or past
            // the partition's end reads to the end (where the read began).
            let limit = match &query.until {
                Bound::Offset(offset) => Some(*offset),
                Bound::Offsets(offsets) => offsets.get(&partition).copied(),
                _ => None,
            };
            let open_end = limit.is_none_or(|limit| limit >= high);
            let end = limit.map_or(high, |limit| limit.min(high));
            let done = if limit.is_some_and(|limit| start >= limit) {
                true
            } else if open_end {
                // tansu reports a partition's end short of the records of
                // its last batch: an empty partition is one whose end is its
                // start, anything else is read past the end (`next_batch`).
                high <= low || start > high
            } else {
                start >= end
            };
            if !done {
                assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
            }
            partitions.insert(
                partition,
                PartitionRange {
                    start,
                    end: end.max(start),
                    limit,
                    open_end,
                    next: start,
                    done,
                },
            );
        }
        if assignment.count() > 0 {
            consumer.assign(&assignment)?;
        }
        Ok(LogReader {
            consumer,
            topic,
            query,
            partitions,
            chains: HashMap::new(),
            from_first_records,
            opened_at,
            stats: ReadStats::default(),
        })
    }

    /// How many records the range holds (about: a time bound is known only
    /// once read), for a progress bar.
    pub fn total(&self) -> u64 {
        self.partitions
            .values()
            .map(|p| (p.end - p.start).max(0) as u64)
            .sum()
    }

    /// How many records of [`LogReader::total`] have been read.
    pub fn position(&self) -> u64 {
        self.partitions
            .values()
            .map(|p| (p.next.min(p.end) - p.start).max(0) as u64)
            .sum()
    }

    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    pub fn is_done(&self) -> bool {
        self.partitions.values().all(|p| p.done)
    }

    /// Where a read that goes on from here starts: the next offset of
    /// every partition (a `from` bound).
    pub fn resume_from(&self) -> Bound {
        Bound::Offsets(self.partitions.iter().map(|(p, r)| (*p, r.next)).collect())
    }

    /// Reads until `max` events are kept, the range is read, or nothing
    /// came for `wait`. An empty batch with [`LogReader::is_done`] false
    /// means: nothing yet, ask again.
    pub fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<LogRecord>, LogError> {
        let mut batch = Vec::new();
        while batch.len() < max && !self.is_done() {
            let Some(message) = self.consumer.poll(wait) else {
                // Quiet for a while: every partition read up to the end it
                // had when the read began holds nothing more of the range.
                if Utc::now() - self.opened_at > QUIET_AFTER {
                    for range in self.partitions.values_mut() {
                        if range.open_end && range.next >= range.end {
                            range.done = true;
                        }
                    }
                }
                break;
            };
            let message = match message {
                Ok(message) => message,
                // The broker had nothing more of this partition: read to the
                // end it had when the read began, it is done.
                Err(KafkaError::PartitionEOF(partition)) => {
                    if let Some(range) = self.partitions.get_mut(&partition) {
                        if range.open_end && range.next >= range.end {
                            range.done = true;
                        }
                    }
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let partition = message.partition();
            let Some(range) = self.partitions.get_mut(&partition) else {
                continue;
            };
            if range.done || message.offset() < range.next {
                continue;
            }
            let timestamp = message
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis);
            // Past its end a partition is done: at the offset asked for, or,
            // read to the end, at a record written after the read began.
            let past_end = range.limit.is_some_and(|limit| message.offset() >= limit)
                || if range.open_end {
                    message.offset() >= range.end && timestamp.is_some_and(|t| t > self.opened_at)
                } else {
                    message.offset() >= range.end
                };
            let past_until = match (&self.query.until, timestamp) {
                (Bound::Time(until), Some(t)) => t > *until + UNTIL_TIME_MARGIN,
                _ => false,
            };
            if past_end || past_until {
                range.done = true;
                self.pause(partition);
                continue;
            }
            range.next = message.offset() + 1;
            self.stats.read += 1;
            let Ok(envelope) = EventEnvelope::from_json(message.payload().unwrap_or_default())
            else {
                self.stats.unreadable += 1;
                tracing::warn!(
                    partition,
                    offset = message.offset(),
                    "a record that is not an event envelope"
                );
                continue;
            };
            if let Some(record) = self.admit(partition, message.offset(), timestamp, envelope) {
                batch.push(record);
            }
        }
        Ok(batch)
    }

    fn admit(
        &mut self,
        partition: i32,
        offset: i64,
        timestamp: Option<DateTime<Utc>>,
        envelope: EventEnvelope,
    ) -> Option<LogRecord> {
        let filter = &self.query.filter;
        if !filter.keeps_aggregate(&envelope.aggregate) {
            return None;
        }
        let key = (envelope.aggregate.kind, envelope.aggregate.id.clone());
        let from_first_records = self.from_first_records;
        let cursor = self.chains.entry(key).or_insert_with(|| {
            if from_first_records {
                Cursor::default()
            } else {
                // The range begins inside this aggregate's history: its
                // chain is taken up at its first event in the range.
                Cursor {
                    version: envelope.sequence.saturating_sub(1),
                    last_event: envelope.previous,
                }
            }
        });
        if !envelope.admit(cursor) {
            self.stats.skipped += 1;
            return None;
        }
        if !filter.keeps_type(&envelope.event_type) {
            return None;
        }
        match (&self.query.from, &self.query.until) {
            (Bound::Time(from), _) if envelope.occurred_at < *from => return None,
            (_, Bound::Time(until)) if envelope.occurred_at > *until => return None,
            _ => {}
        }
        self.stats.matched += 1;
        Some(LogRecord {
            partition,
            offset,
            timestamp,
            event: envelope.for_analysts(self.query.include_private),
        })
    }

    fn pause(&self, partition: i32) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        if let Err(error) = self.consumer.pause(&list) {
            tracing::debug!(%error, partition, "pausing a partition read to its end");
        }
    }
}

/// The first offset of `partition` whose record the broker stamped at or
/// after `at` (records are stamped after their events occurred, so none
/// before it holds an event of `at` or later). `None` when the broker cannot
/// say: the caller reads from the start and filters.
fn offset_at(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    partition: i32,
    at: DateTime<Utc>,
) -> Option<i64> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(at.timestamp_millis()))
        .ok()?;
    let found = consumer.offsets_for_times(list, ADMIN_TIMEOUT).ok()?;
    let element = found.find_partition(topic, partition)?;
    match element.offset() {
        Offset::Offset(offset) if element.error().is_ok() => Some(offset),
        // No record stamped that late: the partition's end.
        Offset::End => consumer
            .fetch_watermarks(topic, partition, ADMIN_TIMEOUT)
            .ok()
            .map(|(_, high)| high),
        _ => None,
    }
}

/// Why the log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("the log cannot be read: {0}")]
    Kafka(#[from] KafkaError),
}

/// Reads the events at `offsets` of one partition (an aggregate's events
/// all share its partition), in offset order, as they are in the log.
/// Nearby events are read in one pass; far ones are sought. Blocks.
pub fn read_at(
    kafka: &KafkaSettings,
    partition: i32,
    offsets: &[i64],
) -> Result<Vec<(i64, EventEnvelope)>, LogError> {
    /// Records read through rather than sought past: a seek costs a fetch
    /// round trip (the broker's fetch wait), reading costs little.
    const SEEK_GAP: i64 = 2_000;
    let mut wanted: Vec<i64> = offsets.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut found = Vec::with_capacity(wanted.len());
    let Some(&first) = wanted.first() else {
        return Ok(found);
    };
    let mut config = kafka.consumer(None);
    config
        .set("fetch.wait.max.ms", READING_FETCH_WAIT_MS.to_string())
        .set("auto.offset.reset", "latest")
        .set("client.id", "tidings-log-reader");
    let consumer: BaseConsumer = config.create()?;
    let topic = kafka.topics().events;
    let assign = |offset: i64| -> Result<(), KafkaError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        consumer.assign(&list)
    };
    assign(first)?;
    let wanted_set: HashSet<i64> = wanted.iter().copied().collect();
    let mut remaining = wanted.iter().copied().peekable();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(&next) = remaining.peek() {
        if std::time::Instant::now() > deadline {
            return Err(LogError::Kafka(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let offset = message.offset();
        if offset < next {
            continue;
        }
        if wanted_set.contains(&offset) {
            if let Ok(envelope) = EventEnvelope::from_json(message.payload().unwrap_or_default()) {
                found.push((offset, envelope));
            }
        }
        // Offsets passed without their record (there was none) are given up.
        while remaining.peek().is_some_and(|o| *o <= offset) {
            remaining.next();
        }
        if let Some(&after) = remaining.peek() {
            if after - offset > SEEK_GAP {
                assign(after)?;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_read_from_their_text() {
        assert_eq!("start".parse(), Ok(Bound::Start));
        assert_eq!("end".parse(), Ok(Bound::End));
        assert_eq!("120".parse(), Ok(Bound::Offset(120)));
        assert_eq!(
            "0:12, 3:40".parse(),
            Ok(Bound::Offsets(BTreeMap::from([(0, 12), (3, 40)])))
        );
        let Ok(Bound::Time(at)) = "2026-11-30T12:00:00+01:00".parse::<Bound>() else {
            panic!("a time");
        };
        assert_eq!(at.to_rfc3339(), "2026-11-30T11:00:00+00:00");
        assert_eq!(
            "2026-11-30".parse::<Bound>().unwrap().to_string(),
            "2026-11-30T00:00:00Z"
        );
        for bad in ["-1", "yesterday", "0:", "a:1", "0:-4", ""] {
            assert!(bad.parse::<Bound>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_print_as_they_read() {
        for text in ["start", "end", "7", "0:1,2:3", "2026-11-30T11:00:00Z"] {
            assert_eq!(text.parse::<Bound>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn filters_know_the_types_of_tidings() {
        let mut filter = Filter::default();
        filter.add_type("post.created").unwrap();
        assert_eq!(
            filter.add_type("post.exploded"),
            Err(QueryError::UnknownType("post.exploded".into()))
        );
        filter.add_aggregate("room:42").unwrap();
        filter.add_aggregate("account").unwrap();
        assert!(filter.add_aggregate("planet:1").is_err());
        assert_eq!(
            filter.aggregate_types,
            vec![AggregateType::Room, AggregateType::Account]
        );
        assert_eq!(filter.aggregate_ids, vec!["42".to_owned()]);
        // An email claim's id holds no colon, a username could not either,
        // but an id may: only the first colon splits.
        let mut filter = Filter::default();
        filter.add_aggregate("email:a:b@example.com").unwrap();
        assert_eq!(filter.aggregate_ids, vec!["a:b@example.com".to_owned()]);
    }
}

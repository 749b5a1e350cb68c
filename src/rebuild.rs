//! `tidings rebuild`: the read models built again from the event log into a
//! new PostgreSQL schema while the live projector keeps serving, verified
//! against the live ones, and switched to atomically.
//!
//! 1. A schema `tidings_rebuild_<time>`, migrated like the live one.
//! 2. Catch-up, in rounds: each round reads the live projector's offsets
//!    and projects the log up to them (never past them: the live position
//!    is only reached, never overtaken) with the projector's own code in
//!    bulk ([`tidings_projections::projector::project_in_bulk`]), through
//!    sessions whose `search_path` is the new schema, in transactions of up
//!    to `--batch` events (the live projector takes at most 500).
//! 3. Once fewer than `--final-lag` events are left, the live projector is
//!    paused (its offsets locked, [`rebuild::lock_live`]; reads go on), the
//!    rest is projected, and a snapshot of the database is taken (a
//!    repeatable-read transaction): both schemas at the same offsets. The
//!    pause ends there; each rebuilt table's digest is compared in both
//!    schemas in that snapshot while the live projector goes on.
//! 4. Equal: catch-up again to within `--final-lag`, a second pause in
//!    which the rest is projected (what the live projector did since the
//!    snapshot, by the same code) and, in that same transaction, the schemas
//!    trade places ([`rebuild::switch`]); the live projector resumes on the
//!    new one. The old schema is kept as `tidings_old_<time>` (the command
//!    prints it) unless `--drop-old`; `--drop <schema>` drops it later.
//!
//! Each pause lasts as long as the last events take to project and the
//! switch, whatever the size of the tables; the digests, which read every
//! row of both schemas, are outside them.
//!
//! The log is read by a consumer of its own, partitions assigned by hand,
//! no group, nothing committed, as `tidings replay` reads it. Redis is not
//! touched: the caches are versioned by rows whose versions the switch
//! keeps.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures_util::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tidings_projections::rebuild::{self, Compared, RebuildError, OLD_PREFIX, REBUILD_PREFIX};
use tidings_schemas::kafka::{KafkaSettings, READING_FETCH_WAIT_MS};

use crate::replay::ProgressMode;
use crate::Settings;

/// How long one poll of the log waits for records.
const POLL_WAIT: Duration = Duration::from_millis(200);
/// A round that projects nothing for this long while the log should hold
/// what it is after stops the rebuild.
const STALL: Duration = Duration::from_secs(60);
/// How long the pause of the live projector waits for its batch under way.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries at pausing the live projector before giving up.
const LOCK_TRIES: u32 = 3;
/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// What librdkafka may hold fetched ahead, per partition: the bound on the
/// reading side's memory (a batch in hand is the other).
const QUEUED_KBYTES: u32 = 16 * 1024;

/// What `tidings rebuild` does.
#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    /// Events per transaction while catching up, at most.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub batch: u32,
    /// Events left to the live position below which the live projector is
    /// paused and the rest is projected (its pause grows with this).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub final_lag: u64,
    /// Drop the old schema right after the switch instead of keeping it.
    #[arg(long, conflicts_with = "drop")]
    pub drop_old: bool,
    /// Rebuild nothing: drop a schema an earlier rebuild kept
    /// (`tidings_old_…`) or left behind (`tidings_rebuild_…`).
    #[arg(long, value_name = "SCHEMA")]
    pub drop: Option<String>,
    /// How progress is shown on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Records of the log projected into the new schema.
    pub events: u64,
    /// From the first record read to the last one projected.
    pub elapsed: Duration,
    /// How long the live projector was paused to take the snapshot the
    /// digests are read in (the last events included).
    pub paused_to_verify: Duration,
    /// How long reading the digests of both schemas took (the live
    /// projector going on).
    pub digests: Duration,
    /// How long the live projector was paused for the switch (the events
    /// projected meanwhile included).
    pub paused_to_switch: Duration,
    /// Events of the log both schemas held when compared.
    pub verified_at: u64,
    /// Events of the log both schemas held at the switch.
    pub switched_at: u64,
    pub compared: Vec<Compared>,
    /// Where the live schema went, if kept.
    pub old: Option<String>,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `tidings rebuild`; `None` when it only dropped a schema.
pub async fn run(settings: &Settings, args: &RebuildArgs) -> anyhow::Result<Option<Summary>> {
    let live_db = tidings_projections::db::connect(&settings.database_url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    if let Some(schema) = &args.drop {
        rebuild::drop_schema(&live_db, schema).await?;
        println!("rebuild: dropped schema {schema}");
        return Ok(None);
    }
    let live = rebuild::live_schema(&live_db).await?;
    // Milliseconds: two rebuilds begun in one second get schemas of their own.
    let stamp = chrono::Utc::now().format("%Y%m%dt%H%M%S%3f").to_string();
    let new = format!("{REBUILD_PREFIX}{stamp}");
    let old = format!("{OLD_PREFIX}{stamp}");
    rebuild::create_schema(&live_db, &new)
        .await
        .with_context(|| format!("creating schema {new}"))?;
    let outcome = rebuild_into(settings, args, &live_db, &live, &new, &old).await;
    match outcome {
        Ok(mut summary) => {
            if args.drop_old {
                rebuild::drop_schema(&live_db, &old).await?;
                summary.old = None;
            }
            Ok(Some(summary))
        }
        Err(error) => {
            // A rebuild that differs is kept for a look; any other failure
            // leaves nothing behind.
            let differs = matches!(
                error.downcast_ref::<RebuildError>(),
                Some(RebuildError::Differ { .. })
            );
            if !differs {
                if let Err(drop_error) = rebuild::drop_schema(&live_db, &new).await {
                    tracing::warn!(%drop_error, schema = %new, "dropping the unfinished rebuild");
                }
            }
            Err(error)
        }
    }
}

async fn rebuild_into(
    settings: &Settings,
    args: &RebuildArgs,
    live_db: &PgPool,
    live: &str,
    new: &str,
    old: &str,
) -> anyhow::Result<Summary> {
    let db = tidings_projections::db::connect_in_schema(&settings.database_url, new, "rebuild", 2)
        .await
        .context("connecting to the rebuild's schema")?;
    rebuild::migrate(live_db, &db, live).await?;
    let mut reader = Reader::open(&settings.kafka())?;
    let mut catch_up = CatchUp {
        db: &db,
        batch: args.batch as usize,
        next: BTreeMap::new(),
        events: 0,
        progress: Progress::new(args.progress),
    };
    let started = Instant::now();
    catch_up
        .near(&mut reader, live_db, live, args.final_lag)
        .await?;
    // First pause: the last events, then one snapshot of both schemas at the
    // same offsets. The digests are read in it while the live projector
    // goes on.
    let (tx, verified_at, paused_at) = catch_up.pause(&mut reader, live_db, live, new).await?;
    let mut snapshot = live_db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *snapshot)
        .await?;
    // The snapshot is taken by its first query, while the lock holds.
    sqlx::query("SELECT 1").execute(&mut *snapshot).await?;
    tx.rollback().await?;
    let paused_to_verify = paused_at.elapsed();
    let digesting = Instant::now();
    let compared = rebuild::compare(&mut snapshot, live, new).await?;
    snapshot.rollback().await?;
    let digests = digesting.elapsed();
    let differences: Vec<String> = compared
        .iter()
        .filter(|c| c.live != c.rebuilt)
        .map(|c| format!("{}: live {}, rebuilt {}", c.table, c.live, c.rebuilt))
        .collect();
    if !differences.is_empty() {
        return Err(RebuildError::Differ {
            schema: new.to_owned(),
            differences: differences.join("; "),
        }
        .into());
    }
    // Second pause: what the live projector did meanwhile, projected by the
    // same code into the verified schema, then the switch.
    catch_up
        .near(&mut reader, live_db, live, args.final_lag)
        .await?;
    let (mut tx, switched_at, paused_at) = catch_up.pause(&mut reader, live_db, live, new).await?;
    let elapsed = started.elapsed();
    rebuild::switch(&mut tx, live, new, old).await?;
    tx.commit().await?;
    let paused_to_switch = paused_at.elapsed();
    db.close().await;
    let summary = Summary {
        events: catch_up.events,
        elapsed,
        paused_to_verify,
        digests,
        paused_to_switch,
        verified_at: lag(&verified_at, &BTreeMap::new()),
        switched_at: lag(&switched_at, &BTreeMap::new()),
        compared,
        old: Some(old.to_owned()),
    };
    catch_up.progress.finish();
    Ok(summary)
}

/// Events from `next` to `target`, summed over partitions.
fn lag(target: &BTreeMap<i32, i64>, next: &BTreeMap<i32, i64>) -> u64 {
    target
        .iter()
        .map(|(p, t)| (t - next.get(p).copied().unwrap_or(0)).max(0) as u64)
        .sum()
}

/// The partitions still short of `target`, with where each goes on from.
fn behind(target: &BTreeMap<i32, i64>, next: &BTreeMap<i32, i64>) -> Vec<(i32, i64)> {
    target
        .iter()
        .map(|(p, t)| (*p, *t, next.get(p).copied().unwrap_or(0)))
        .filter(|(_, t, n)| n < t)
        .map(|(p, _, n)| (p, n))
        .collect()
}

/// Whether a record read belongs to the round: at or past what is taken
/// already of its partition, short of the round's target. Records past the
/// target are left for a later round (read again then); ones before come
/// from an earlier assignment.
fn belongs(
    taken: &BTreeMap<i32, i64>,
    target: &BTreeMap<i32, i64>,
    partition: i32,
    offset: i64,
) -> bool {
    let from = taken.get(&partition).copied().unwrap_or(0);
    let to = target.get(&partition).copied().unwrap_or(0);
    offset >= from && offset < to
}

/// The rebuild's own reader of the events topic.
struct Reader {
    consumer: StreamConsumer,
    topic: String,
}

impl Reader {
    fn open(kafka: &KafkaSettings) -> anyhow::Result<Reader> {
        let mut config = kafka.consumer(None);
        config
            .set("fetch.wait.max.ms", READING_FETCH_WAIT_MS.to_string())
            .set("queued.max.messages.kbytes", QUEUED_KBYTES.to_string())
            .set("client.id", "tidings-rebuild");
        Ok(Reader {
            consumer: config.create().context("creating the rebuild's consumer")?,
            topic: kafka.topics().events,
        })
    }

    /// Reads `partitions` from the offsets given, and nothing else.
    fn assign(&self, partitions: &[(i32, i64)]) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in partitions {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        }
        self.consumer.assign(&list)?;
        Ok(())
    }
}

struct CatchUp<'a> {
    db: &'a PgPool,
    batch: usize,
    /// The rebuild's next offset per partition, as committed in its schema.
    next: BTreeMap<i32, i64>,
    events: u64,
    progress: Progress,
}

impl CatchUp<'_> {
    /// Rounds of catch-up until fewer than `final_lag` events are left to
    /// the live projector's offsets.
    async fn near(
        &mut self,
        reader: &mut Reader,
        live_db: &PgPool,
        live: &str,
        final_lag: u64,
    ) -> anyhow::Result<()> {
        loop {
            let target = rebuild::offsets(live_db, live).await?;
            self.progress.target(&target);
            if lag(&target, &self.next) <= final_lag {
                return Ok(());
            }
            self.round(reader, &target).await?;
        }
    }

    /// Pauses the live projector ([`rebuild::lock_live`], in the transaction
    /// returned, until it ends) and projects the rest, so that both schemas
    /// stand at the same offsets, which it returns with when the pause began.
    async fn pause<'db>(
        &mut self,
        reader: &mut Reader,
        live_db: &'db PgPool,
        live: &str,
        new: &str,
    ) -> anyhow::Result<(
        sqlx::Transaction<'db, sqlx::Postgres>,
        BTreeMap<i32, i64>,
        Instant,
    )> {
        let mut tries = 0;
        let (tx, target, paused_at) = loop {
            tries += 1;
            let mut tx = live_db.begin().await?;
            let paused_at = Instant::now();
            match rebuild::lock_live(&mut tx, live, LOCK_TIMEOUT).await {
                Ok(target) => break (tx, target, paused_at),
                Err(error) if tries < LOCK_TRIES => {
                    tracing::warn!(%error, "pausing the live projector; catching up and trying again");
                    drop(tx);
                    let target = rebuild::offsets(live_db, live).await?;
                    self.round(reader, &target).await?;
                }
                Err(error) => return Err(error).context("pausing the live projector"),
            }
        };
        self.progress.target(&target);
        self.round(reader, &target).await?;
        let rebuilt = rebuild::offsets(self.db, new).await?;
        if rebuilt != target {
            return Err(RebuildError::Offsets {
                rebuilt,
                live: target,
            }
            .into());
        }
        Ok((tx, target, paused_at))
    }

    /// Projects the log up to `target` (each partition's next offset), in
    /// batches of at most `batch` records, each in one transaction.
    async fn round(
        &mut self,
        reader: &mut Reader,
        target: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<()> {
        let partitions = behind(target, &self.next);
        if partitions.is_empty() {
            return Ok(());
        }
        reader.assign(&partitions)?;
        let mut last_progress = Instant::now();
        while !behind(target, &self.next).is_empty() {
            let mut taken = self.next.clone();
            let mut records: Vec<OwnedMessage> = Vec::with_capacity(self.batch.min(10_000));
            let mut take = |message: OwnedMessage| {
                let (partition, offset) = (message.partition(), message.offset());
                if belongs(&taken, target, partition, offset) {
                    taken.insert(partition, offset + 1);
                    records.push(message);
                }
            };
            match tokio::time::timeout(POLL_WAIT, reader.consumer.recv()).await {
                Ok(Ok(message)) => take(message.detach()),
                Ok(Err(error)) => tracing::warn!(%error, "reading events"),
                Err(_) => {}
            }
            let mut polled = 1;
            while polled < self.batch {
                match reader.consumer.recv().now_or_never() {
                    Some(Ok(message)) => take(message.detach()),
                    Some(Err(error)) => {
                        tracing::warn!(%error, "reading events");
                        break;
                    }
                    None => break,
                }
                polled += 1;
            }
            if records.is_empty() {
                if last_progress.elapsed() > STALL {
                    anyhow::bail!(
                        "no events read for {STALL:?}: the rebuild stands at {:?}, the live projector at {target:?}",
                        self.next
                    );
                }
                continue;
            }
            let projected =
                tidings_projections::projector::project_in_bulk(self.db, &records).await?;
            if let Some((partition, offset, why)) = projected.halted.first() {
                anyhow::bail!(
                    "the event at {partition}:{offset} cannot be read by this build ({why}), though the live projector passed it: rebuild with the build that serves"
                );
            }
            self.next.extend(projected.offsets.iter().copied());
            self.events += records.len() as u64;
            self.progress.show(self.events, lag(target, &self.next));
            last_progress = Instant::now();
        }
        Ok(())
    }
}

/// Progress on stderr: a bar on a terminal, a line every few seconds
/// otherwise.
enum Progress {
    Bar(indicatif::ProgressBar),
    Plain {
        started: Instant,
        last: Instant,
        events: u64,
    },
    None,
}

impl Progress {
    fn new(mode: ProgressMode) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        match mode {
            ProgressMode::Bar => Progress::bar(),
            ProgressMode::Auto if terminal => Progress::bar(),
            ProgressMode::Auto | ProgressMode::Plain => {
                let now = Instant::now();
                Progress::Plain {
                    started: now,
                    last: now,
                    events: 0,
                }
            }
            ProgressMode::None => Progress::None,
        }
    }

    fn bar() -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events, {rate} events/s, ETA {eta}",
            )
            .expect("a valid progress template")
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}", state.per_sec());
                },
            ),
        );
        Progress::Bar(bar)
    }

    /// The live position to reach, as last read.
    fn target(&mut self, target: &BTreeMap<i32, i64>) {
        let total: i64 = target.values().sum();
        match self {
            Progress::Bar(bar) => bar.set_length(total.max(0) as u64),
            Progress::Plain { events, .. } if *events == 0 => {
                eprintln!("rebuild: the live projector stands at {total} events");
            }
            _ => {}
        }
    }

    fn show(&mut self, projected: u64, lag: u64) {
        match self {
            Progress::Bar(bar) => bar.set_position(projected),
            Progress::Plain {
                started,
                last,
                events,
            } => {
                *events = projected;
                if last.elapsed() < PLAIN_PROGRESS_EVERY {
                    return;
                }
                *last = Instant::now();
                let rate = projected as f64 / started.elapsed().as_secs_f64().max(1e-9);
                eprintln!(
                    "rebuild: {projected} events projected, {rate:.0} events/s, {lag} behind the live projector"
                );
            }
            Progress::None => {}
        }
    }

    fn finish(self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// The lines `tidings rebuild` ends with, on stdout.
pub fn report(summary: &Summary) -> String {
    let rows: i64 = summary.compared.iter().map(|c| c.live.rows).sum();
    let mut out = format!(
        "rebuild: {} events projected in {:.2} s ({:.0} events/s)\n\
         rebuild: {} tables with the same digest in both schemas at {} events ({rows} rows), read in {:.3} s\n\
         rebuild: the live projector paused {:.3} s for that snapshot and {:.3} s for the switch at {} events\n",
        summary.events,
        summary.elapsed.as_secs_f64(),
        summary.rate(),
        summary.compared.len(),
        summary.verified_at,
        summary.digests.as_secs_f64(),
        summary.paused_to_verify.as_secs_f64(),
        summary.paused_to_switch.as_secs_f64(),
        summary.switched_at,
    );
    for c in &summary.compared {
        out.push_str(&format!("rebuild:   {} {}\n", c.table, c.live));
    }
    match &summary.old {
        Some(old) => out.push_str(&format!(
            "rebuild: switched; the old schema is kept as {old} (drop it with `tidings rebuild --drop {old}`)\n"
        )),
        None => out.push_str("rebuild: switched; the old schema is dropped\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_lag_counts_what_is_left_to_each_partitions_target() {
        let target = offsets(&[(0, 10), (1, 5), (3, 7)]);
        assert_eq!(lag(&target, &offsets(&[])), 22);
        assert_eq!(lag(&target, &offsets(&[(0, 10), (1, 2), (2, 9)])), 3 + 7);
        assert_eq!(
            behind(&target, &offsets(&[(0, 10), (1, 2)])),
            [(1, 2), (3, 0)]
        );
        assert!(behind(&target, &target).is_empty());
    }

    #[test]
    fn a_round_takes_each_partition_from_where_it_stands_to_its_target_only() {
        let target = offsets(&[(0, 10), (1, 5)]);
        let taken = offsets(&[(0, 4)]);
        assert!(!belongs(&taken, &target, 0, 3), "projected already");
        assert!(belongs(&taken, &target, 0, 4));
        assert!(belongs(&taken, &target, 0, 9));
        assert!(!belongs(&taken, &target, 0, 10), "past the live projector");
        assert!(belongs(&taken, &target, 1, 0));
        assert!(
            !belongs(&taken, &target, 2, 0),
            "a partition the live projector has not begun"
        );
    }
}

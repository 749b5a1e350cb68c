//! `tidings replay`: a range of the event log, filtered, as NDJSON, CSV or
//! Parquet, for analysts.
//!
//! The reading is [`tidings_projections::log::LogReader`]'s (its own
//! consumer, partitions assigned by hand, no group, nothing committed: the
//! running roles never notice it). Here: the command's flags, the three
//! writers, and the progress it shows (a bar with rate and ETA on a
//! terminal, a plain line every few seconds otherwise), all on stderr so
//! that stdout carries only the events.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arrow_array::builder::{
    Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use clap::{Args, ValueEnum};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tidings_projections::log::{Bound, Filter, LogQuery, LogReader, LogRecord, ReadStats};
use tidings_schemas::kafka::KafkaSettings;

/// Events read from the log per batch: a batch is also a Parquet row group's
/// share and the unit between two looks at the progress.
const BATCH: usize = 10_000;
/// How long one poll of the log waits for records.
const POLL_WAIT: Duration = Duration::from_millis(200);
/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Rows per Parquet row group.
const ROW_GROUP: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One event envelope per line, as on the topic.
    Ndjson,
    /// One row per event: the envelope's fields as columns, `data` as JSON text.
    Csv,
    /// The same columns as CSV, typed (times as UTC timestamps).
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    Bar,
    Plain,
    None,
}

/// What `tidings replay` reads and writes.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Where to begin: `start`, an offset (every partition), partition
    /// offsets `0:120,1:98`, or a time (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long, default_value = "start")]
    pub from: Bound,
    /// Where to stop: `end` (the end as the replay begins), an offset
    /// (excluded), partition offsets, or a time (included).
    #[arg(long, default_value = "end")]
    pub until: Bound,
    /// Event types to keep (`post.created,room.message_posted`); all by default.
    #[arg(long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Aggregate types to keep (`account`, `post`, `room`…).
    #[arg(long = "aggregate-type", value_delimiter = ',')]
    pub aggregate_types: Vec<String>,
    /// Aggregate ids to keep.
    #[arg(long = "aggregate-id", value_delimiter = ',')]
    pub aggregate_ids: Vec<String>,
    /// An aggregate type, or type and id (`room:<uuid>`), to keep.
    #[arg(long = "aggregate")]
    pub aggregates: Vec<String>,
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: Format,
    /// The file to write (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Keep email addresses and phone numbers (and the addresses that name
    /// email claims). Password hashes never leave Tidings.
    #[arg(long)]
    pub include_private: bool,
    /// How progress is shown on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
}

impl ReplayArgs {
    pub fn query(&self) -> anyhow::Result<LogQuery> {
        let mut filter = Filter::default();
        for name in &self.types {
            filter.add_type(name)?;
        }
        for name in &self.aggregate_types {
            filter.add_aggregate_type(name)?;
        }
        for spec in &self.aggregates {
            filter.add_aggregate(spec)?;
        }
        filter
            .aggregate_ids
            .extend(self.aggregate_ids.iter().cloned());
        Ok(LogQuery {
            from: self.from.clone(),
            until: self.until.clone(),
            filter,
            include_private: self.include_private,
        })
    }
}

/// What a replay did.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub stats: ReadStats,
    pub elapsed: Duration,
}

impl Summary {
    /// Records read from the log per second.
    pub fn rate(&self) -> f64 {
        self.stats.read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs a replay to its end. Blocks: call it off the async workers.
pub fn run(kafka: &KafkaSettings, args: &ReplayArgs) -> anyhow::Result<Summary> {
    let query = args.query()?;
    let started = Instant::now();
    let mut reader = LogReader::open(kafka, query)?;
    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => Box::new(std::io::stdout()),
    };
    let out = BufWriter::with_capacity(1 << 20, out);
    let mut sink: Box<dyn Sink> = match args.format {
        Format::Ndjson => Box::new(Ndjson(out)),
        Format::Csv => Box::new(Csv::new(out)?),
        Format::Parquet => Box::new(Parquet::new(out)?),
    };
    let mut progress = Progress::new(args.progress, reader.total());
    while !reader.is_done() {
        let batch = reader.next_batch(BATCH, POLL_WAIT)?;
        sink.write(&batch)?;
        progress.show(reader.position(), reader.stats());
    }
    sink.finish()?;
    let summary = Summary {
        stats: reader.stats(),
        elapsed: started.elapsed(),
    };
    progress.finish(&summary);
    Ok(summary)
}

/// Where events go, in one format.
trait Sink {
    fn write(&mut self, batch: &[LogRecord]) -> anyhow::Result<()>;
    fn finish(self: Box<Self>) -> anyhow::Result<()>;
}

type Output = BufWriter<Box<dyn Write + Send>>;

struct Ndjson(Output);

impl Sink for Ndjson {
    fn write(&mut self, batch: &[LogRecord]) -> anyhow::Result<()> {
        for record in batch {
            serde_json::to_writer(&mut self.0, &record.event)?;
            self.0.write_all(b"\n")?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> anyhow::Result<()> {
        self.0.flush()?;
        Ok(())
    }
}

/// The columns of CSV and Parquet, in order.
pub const COLUMNS: [&str; 15] = [
    "partition",
    "offset",
    "timestamp",
    "event_id",
    "type",
    "version",
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "previous",
    "occurred_at",
    "actor",
    "command_id",
    "correlation_id",
    "data",
];

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

struct Csv(csv::Writer<Output>);

impl Csv {
    fn new(out: Output) -> anyhow::Result<Csv> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(COLUMNS)?;
        Ok(Csv(writer))
    }
}

impl Sink for Csv {
    fn write(&mut self, batch: &[LogRecord]) -> anyhow::Result<()> {
        for record in batch {
            let e = &record.event;
            self.0.write_record([
                record.partition.to_string(),
                record.offset.to_string(),
                record.timestamp.map(rfc3339).unwrap_or_default(),
                e.event_id.to_string(),
                e.event_type.clone(),
                e.version.to_string(),
                e.aggregate.kind.as_str().to_owned(),
                e.aggregate.id.clone(),
                e.sequence.to_string(),
                e.previous.map(|p| p.to_string()).unwrap_or_default(),
                rfc3339(e.occurred_at),
                e.actor.map(|a| a.to_string()).unwrap_or_default(),
                e.command_id.to_string(),
                e.correlation_id.to_string(),
                serde_json::to_string(&e.data)?,
            ])?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        let mut out = self.0.into_inner().map_err(|e| e.into_error())?;
        out.flush()?;
        Ok(())
    }
}

/// The Arrow schema of a Parquet export: one row per event.
pub fn arrow_schema() -> Schema {
    let utc = || Some(Arc::<str>::from("UTC"));
    Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, utc()),
            true,
        ),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("version", DataType::Int32, false),
        Field::new("aggregate_type", DataType::Utf8, false),
        Field::new("aggregate_id", DataType::Utf8, false),
        Field::new("sequence", DataType::Int64, false),
        Field::new("previous", DataType::Utf8, true),
        Field::new(
            "occurred_at",
            DataType::Timestamp(TimeUnit::Microsecond, utc()),
            false,
        ),
        Field::new("actor", DataType::Utf8, true),
        Field::new("command_id", DataType::Utf8, false),
        Field::new("correlation_id", DataType::Utf8, false),
        Field::new("data", DataType::Utf8, false),
    ])
}

struct Parquet {
    writer: ArrowWriter<Output>,
    schema: Arc<Schema>,
}

impl Parquet {
    fn new(out: Output) -> anyhow::Result<Parquet> {
        let schema = Arc::new(arrow_schema());
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP))
            .set_created_by(format!("tidings {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(properties))?;
        Ok(Parquet { writer, schema })
    }
}

impl Sink for Parquet {
    fn write(&mut self, batch: &[LogRecord]) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len();
        let mut partition = Int32Builder::with_capacity(n);
        let mut offset = Int64Builder::with_capacity(n);
        let mut timestamp = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut event_id = StringBuilder::new();
        let mut event_type = StringBuilder::new();
        let mut version = Int32Builder::with_capacity(n);
        let mut aggregate_type = StringBuilder::new();
        let mut aggregate_id = StringBuilder::new();
        let mut sequence = Int64Builder::with_capacity(n);
        let mut previous = StringBuilder::new();
        let mut occurred_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut actor = StringBuilder::new();
        let mut command_id = StringBuilder::new();
        let mut correlation_id = StringBuilder::new();
        let mut data = StringBuilder::new();
        for record in batch {
            let e = &record.event;
            partition.append_value(record.partition);
            offset.append_value(record.offset);
            timestamp.append_option(record.timestamp.map(|t| t.timestamp_millis()));
            event_id.append_value(e.event_id.to_string());
            event_type.append_value(&e.event_type);
            version.append_value(e.version as i32);
            aggregate_type.append_value(e.aggregate.kind.as_str());
            aggregate_id.append_value(&e.aggregate.id);
            sequence.append_value(e.sequence as i64);
            previous.append_option(e.previous.map(|p| p.to_string()));
            occurred_at.append_value(e.occurred_at.timestamp_micros());
            actor.append_option(e.actor.map(|a| a.to_string()));
            command_id.append_value(e.command_id.to_string());
            correlation_id.append_value(e.correlation_id.to_string());
            data.append_value(serde_json::to_string(&e.data)?);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(partition.finish()),
            Arc::new(offset.finish()),
            Arc::new(timestamp.finish()),
            Arc::new(event_id.finish()),
            Arc::new(event_type.finish()),
            Arc::new(version.finish()),
            Arc::new(aggregate_type.finish()),
            Arc::new(aggregate_id.finish()),
            Arc::new(sequence.finish()),
            Arc::new(previous.finish()),
            Arc::new(occurred_at.finish()),
            Arc::new(actor.finish()),
            Arc::new(command_id.finish()),
            Arc::new(correlation_id.finish()),
            Arc::new(data.finish()),
        ];
        self.writer
            .write(&RecordBatch::try_new(self.schema.clone(), columns)?)?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        let mut out = self.writer.into_inner()?;
        out.flush()?;
        Ok(())
    }
}

/// Progress on stderr.
enum Progress {
    Bar(indicatif::ProgressBar),
    Plain {
        total: u64,
        started: Instant,
        last: Instant,
    },
    None,
}

impl Progress {
    fn new(mode: ProgressMode, total: u64) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        match mode {
            ProgressMode::Bar => Progress::bar(total),
            ProgressMode::Auto if terminal => Progress::bar(total),
            ProgressMode::Auto | ProgressMode::Plain => {
                let now = Instant::now();
                eprintln!("replay: about {total} records to read");
                Progress::Plain {
                    total,
                    started: now,
                    last: now,
                }
            }
            ProgressMode::None => Progress::None,
        }
    }

    fn bar(total: u64) -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} records, {rate} records/s, ETA {eta} {msg}",
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

    fn show(&mut self, position: u64, stats: ReadStats) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(position);
                bar.set_message(format!("({} events kept)", stats.matched));
            }
            Progress::Plain {
                total,
                started,
                last,
            } => {
                if last.elapsed() < PLAIN_PROGRESS_EVERY {
                    return;
                }
                *last = Instant::now();
                let seconds = started.elapsed().as_secs_f64().max(1e-9);
                let rate = position as f64 / seconds;
                let left = total.saturating_sub(position) as f64 / rate.max(1e-9);
                eprintln!(
                    "replay: {position}/{total} records ({:.1} %), {rate:.0} records/s, ETA {left:.0} s, {} events kept",
                    position as f64 * 100.0 / (*total).max(1) as f64,
                    stats.matched
                );
            }
            Progress::None => {}
        }
    }

    fn finish(self, summary: &Summary) {
        if let Progress::Bar(bar) = &self {
            bar.finish_and_clear();
        }
        if !matches!(self, Progress::None) {
            let s = summary.stats;
            eprintln!(
                "replay: {} records read, {} events written, {} skipped by the sequence rule, {} unreadable, in {:.2} s ({:.0} records/s)",
                s.read,
                s.matched,
                s.skipped,
                s.unreadable,
                summary.elapsed.as_secs_f64(),
                summary.rate()
            );
        }
    }
}

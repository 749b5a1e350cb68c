//! The `tidings` binary: one program, a subcommand per job.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tidings::{telemetry, Application, Role, Settings};

/// jemalloc instead of glibc's malloc: the gateway allocates and frees a few
/// kilobytes per WebSocket in waves of connections, and glibc keeps what was
/// freed in its per-thread arenas, so the process stayed at its peak after
/// the sockets closed (and grew with every wave). jemalloc hands it back.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (`_RJEM_MALLOC_CONF` in the environment overrides
/// them): a background thread returns freed pages even while the process is
/// idle (otherwise only allocations do it); they go back after about a
/// second (`dirty_decay_ms`, 10 s by default); and they are returned at once
/// (`muzzy_decay_ms:0`) rather than first marked lazily free, which leaves
/// them counted in the resident set until the kernel needs them.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Settings come from flags, then `TIDINGS_*` environment variables, then the
/// settings file (`--config`), then defaults. `.env.example` lists them all.
#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Event-sourced CQRS backend for real-time social and messaging apps"
)]
#[command(
    after_help = "Examples:\n  tidings serve                              every role on 127.0.0.1:8080\n  tidings serve --roles api,realtime         the HTTP and WebSocket front only\n  tidings --config prod.env config           the effective settings, secrets masked\n  tidings migrate && tidings topics          prepare PostgreSQL and Kafka"
)]
struct Cli {
    /// A settings file of `TIDINGS_*=value` lines (as printed by `tidings config`).
    #[arg(long, global = true, env = "TIDINGS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the roles asked for (all by default) until SIGTERM or Ctrl-C.
    #[command(
        after_help = "Examples:\n  tidings serve\n  tidings serve --roles api,realtime --http-addr 0.0.0.0:8080\n  tidings serve --roles deciders,projector"
    )]
    Serve {
        /// Comma-separated: api, deciders, projector, realtime, webhooks.
        #[arg(long, value_delimiter = ',', default_values = ["api", "deciders", "projector", "realtime", "webhooks"])]
        roles: Vec<Role>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Applies the PostgreSQL migrations.
    #[command(
        after_help = "Example:\n  TIDINGS_DATABASE_URL=postgres://postgres@127.0.0.1/tidings tidings migrate"
    )]
    Migrate {
        #[command(flatten)]
        settings: Settings,
    },
    /// Creates the Kafka topics if they are missing.
    #[command(after_help = "Example:\n  TIDINGS_TOPIC_PREFIX=staging tidings topics")]
    Topics {
        #[command(flatten)]
        settings: Settings,
    },
    /// Writes a range of the event log as NDJSON, CSV or Parquet, for
    /// analysts. It reads with a consumer of its own (no group, nothing
    /// committed): the running roles never notice it.
    #[command(
        after_help = "Examples:\n  tidings replay > events.ndjson                         the whole log, as on the topic\n  tidings replay --format parquet -o events.parquet      one row per event, for DuckDB or pandas\n  tidings replay --from 2026-11-30T00:00:00Z --until 2026-11-30T12:00:00Z --type room.message_posted --format csv\n  tidings replay --aggregate room:6f1c0e4e-0000-0000-0000-000000000000\n  tidings replay --from 0:1200,1:900 --until 5000        partition offsets, up to offset 5000 of each\n\nEmail addresses and phone numbers are left out unless --include-private;\npassword hashes never leave Tidings. Events are upcast to their current\nversion; events off their aggregate's chain (the sequence rule) are skipped\nand counted. Progress goes to stderr: a bar on a terminal, a line every 5 s\notherwise."
    )]
    Replay {
        #[command(flatten)]
        replay: tidings::replay::ReplayArgs,
        #[command(flatten)]
        settings: Settings,
    },
    /// Builds the read models again from the event log into a new
    /// PostgreSQL schema while the live projector keeps serving, checks
    /// that both hold the same (a digest per table, at the same offsets)
    /// and switches to it atomically. The old schema is kept (its name is
    /// printed) until dropped with --drop.
    #[command(
        after_help = "Examples:\n  tidings rebuild                                  rebuild, verify, switch; keep the old schema\n  tidings rebuild --drop-old                       the same, and drop the old schema after the switch\n  tidings rebuild --drop tidings_old_20261201t041500   drop a schema an earlier rebuild kept\n\nReads go on throughout; the live projector pauses only for the last\n--final-lag events, the digests and the switch. Progress goes to stderr\n(events/s: a bar on a terminal, a line every 5 s otherwise); the outcome\nto stdout."
    )]
    Rebuild {
        #[command(flatten)]
        rebuild: tidings::rebuild::RebuildArgs,
        #[command(flatten)]
        settings: Settings,
    },
    /// Prints the effective settings, secrets masked, as a settings file.
    #[command(
        after_help = "Example:\n  tidings config > tidings.env && tidings --config tidings.env serve"
    )]
    Config {
        #[command(flatten)]
        settings: Settings,
    },
}

/// Loads the settings file into the environment before the flags are read;
/// variables already set win over the file.
fn load_settings_file() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .windows(2)
        .find(|pair| pair[0] == "--config")
        .map(|pair| pair[1].clone())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--config=").map(str::to_owned))
        })
        .or_else(|| std::env::var("TIDINGS_CONFIG").ok());
    if let Some(path) = path {
        dotenvy::from_path(&path).with_context(|| format!("reading the settings file {path}"))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    load_settings_file()?;
    let cli = Cli::parse();
    telemetry::init();
    match cli.command {
        Command::Serve { roles, settings } => {
            let app = Application::build(settings.clone(), &roles).await?;
            if let Some(port) = app.port() {
                let host = settings
                    .http_addr
                    .rsplit_once(':')
                    .map_or("127.0.0.1", |(h, _)| h);
                let (http, ws) = if settings.tls_cert.is_some() {
                    ("https", "wss")
                } else {
                    ("http", "ws")
                };
                println!("Tidings is up: REST {http}://{host}:{port}/api  WebSocket {ws}://{host}:{port}/ws  docs {http}://{host}:{port}/docs  health {http}://{host}:{port}/ready");
            }
            let shutdown = app.shutdown_token();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutting down");
                shutdown.cancel();
            });
            app.run_until_stopped().await
        }
        Command::Migrate { settings } => {
            let db = tidings_projections::db::connect(&settings.database_url, 2).await?;
            tidings_projections::db::migrate(&db).await?;
            println!(
                "migrations applied to {}",
                settings
                    .database_url
                    .rsplit('/')
                    .next()
                    .unwrap_or("the database")
            );
            Ok(())
        }
        Command::Topics { settings } => {
            let kafka = settings.kafka();
            kafka.ensure_topics().await?;
            println!("topics ready: {}", kafka.topics().all().join(", "));
            Ok(())
        }
        Command::Replay { replay, settings } => {
            let kafka = settings.kafka();
            tokio::task::spawn_blocking(move || tidings::replay::run(&kafka, &replay)).await??;
            Ok(())
        }
        Command::Rebuild { rebuild, settings } => {
            if let Some(summary) = tidings::rebuild::run(&settings, &rebuild).await? {
                print!("{}", tidings::rebuild::report(&summary));
            }
            Ok(())
        }
        Command::Config { settings } => {
            print!("{}", settings.masked());
            settings.check().map_err(anyhow::Error::msg)
        }
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

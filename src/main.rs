//! The `tidings` binary: one program, a subcommand per job.

use clap::{Parser, Subcommand};
use tidings::{telemetry, Application, Role, Settings};

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Event-sourced CQRS backend for real-time social and messaging apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the roles asked for (all by default).
    ///
    /// Example: `tidings serve --roles api,realtime` on one host and
    /// `tidings serve --roles deciders,projector` on another.
    Serve {
        #[arg(long, value_delimiter = ',', default_values = ["api", "deciders", "projector", "realtime"])]
        roles: Vec<Role>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Applies the PostgreSQL migrations. Example: `tidings migrate`.
    Migrate {
        #[command(flatten)]
        settings: Settings,
    },
    /// Creates the Kafka topics if missing. Example: `tidings topics`.
    Topics {
        #[command(flatten)]
        settings: Settings,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    match Cli::parse().command {
        Command::Serve { roles, settings } => {
            let app = Application::build(settings.clone(), &roles).await?;
            if let Some(port) = app.port() {
                let host = settings
                    .http_addr
                    .rsplit_once(':')
                    .map_or("127.0.0.1", |(h, _)| h);
                println!("Tidings is up: REST http://{host}:{port}/api  WebSocket ws://{host}:{port}/ws  health http://{host}:{port}/ready");
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

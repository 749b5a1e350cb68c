//! The application: the roles asked for, started against the services given.
//!
//! `Application::build` connects to PostgreSQL, Redis and Kafka, checks the
//! topics, binds the HTTP listener (port 0 in tests, see
//! [`Application::port`]) and starts each role as a supervised task with a
//! PostgreSQL pool of its own. A role that fails is started again after a
//! pause that doubles up to [`MAX_BACKOFF`], while the others keep serving;
//! `/ready` and the `tidings_role_*` metrics say what each role is doing.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use futures_util::FutureExt;
use tidings_api::auth::Jwt;
use tidings_api::health::{RoleReport, Roles};
use tidings_api::media::{MediaService, MediaSettings};
use tidings_api::{ApiSettings, ApiState};
use tidings_commands::bus::BusShortcuts;
use tidings_commands::decider::{self, DeciderSettings, DeciderShortcuts};
use tidings_commands::CommandBus;
use tidings_projections::projector::{self, ProjectorSettings};
use tidings_projections::{db, lag, outbox, Cache};
use tidings_realtime::presence::Presence;
use tidings_realtime::{Gateway, Hub};
use tidings_schemas::kafka::Owned;
use tidings_schemas::shortcut::Shortcut;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::settings::{Role, Settings, DEV_JWT_SECRET};
use tidings_http::outbound::Destinations;

/// How long in-flight HTTP requests and sockets get to finish at shutdown.
const SHUTDOWN_GRACE_SECS: u64 = 5;
/// The pause before a failed role starts again, doubled at each failure in a
/// row up to [`MAX_BACKOFF`]: a dependency that is down is not hammered.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A role that ran this long before it failed starts again after
/// [`FIRST_BACKOFF`]: the failure is a new one, not the same one again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Connections of the pools of the background roles: each holds at most one
/// transaction at a time, plus one spare for a seek or a snapshot.
const ROLE_POOL: u32 = 2;

/// What each role of this process is doing, for `/ready` and the metrics.
#[derive(Clone, Default)]
struct RoleBoard(Arc<Mutex<BTreeMap<&'static str, RoleStatus>>>);

struct RoleStatus {
    state: RoleState,
    /// The partitions a role that shares its work in a consumer group owns.
    owned: Option<Owned>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RoleState {
    Running,
    /// Failed; starts again after a pause.
    Restarting,
    Stopped,
}

impl RoleBoard {
    fn set(&self, role: &'static str, state: RoleState, owned: Option<&Owned>) {
        let mut board = self.0.lock().expect("role board lock");
        let entry = board.entry(role).or_insert(RoleStatus {
            state,
            owned: owned.cloned(),
        });
        entry.state = state;
        metrics::gauge!("tidings_role_up", "role" => role)
            .set(f64::from(u8::from(state == RoleState::Running)));
    }

    fn reports(&self) -> Vec<RoleReport> {
        let board = self.0.lock().expect("role board lock");
        board
            .iter()
            .map(|(role, status)| {
                let partitions = status.owned.as_ref().map(Owned::count);
                if let Some(count) = partitions {
                    metrics::gauge!("tidings_role_partitions", "role" => *role).set(count as f64);
                }
                // A group member that owns nothing decides or projects
                // nothing: with at most as many members as partitions, every
                // member should own at least one.
                let halted = status.owned.as_ref().map(Owned::halted).unwrap_or_default();
                let ready = status.state == RoleState::Running
                    && partitions != Some(0)
                    && halted.is_empty();
                RoleReport {
                    role: (*role).to_owned(),
                    state: match status.state {
                        RoleState::Running => "running",
                        RoleState::Restarting => "restarting",
                        RoleState::Stopped => "stopped",
                    }
                    .to_owned(),
                    partitions,
                    halted,
                    ready,
                }
            })
            .collect()
    }
}

/// Runs a role until `stop`; whenever it fails (an error, a panic, or an end
/// nobody asked for) it is started again after a backoff.
async fn supervise<F, Fut>(
    role: &'static str,
    board: RoleBoard,
    owned: Option<Owned>,
    stop: CancellationToken,
    mut start: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        board.set(role, RoleState::Running, owned.as_ref());
        let started = Instant::now();
        let outcome = AssertUnwindSafe(start()).catch_unwind().await;
        if let Some(owned) = &owned {
            owned.clear();
        }
        if stop.is_cancelled() {
            board.set(role, RoleState::Stopped, None);
            return outcome.unwrap_or_else(|_| Err(anyhow::anyhow!("{role} panicked")));
        }
        let error = match outcome {
            Ok(Ok(())) => anyhow::anyhow!("{role} stopped by itself"),
            Ok(Err(error)) => error,
            Err(_) => anyhow::anyhow!("{role} panicked"),
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        metrics::counter!("tidings_role_restarts_total", "role" => role).increment(1);
        tracing::error!(role, error = format!("{error:#}"), retry_in = ?backoff, "role failed; starting it again");
        board.set(role, RoleState::Restarting, None);
        tokio::select! {
            _ = stop.cancelled() => {
                board.set(role, RoleState::Stopped, None);
                return Ok(());
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

pub struct Application {
    port: Option<u16>,
    server: Option<actix_web::dev::Server>,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings, roles: &[Role]) -> anyhow::Result<Self> {
        settings.check().map_err(anyhow::Error::msg)?;
        let roles: HashSet<Role> = roles.iter().copied().collect();
        crate::telemetry::install_metrics();
        if settings.jwt_secret == DEV_JWT_SECRET && roles.contains(&Role::Api) {
            tracing::warn!(
                "TIDINGS_JWT_SECRET is the development default: set a secret of your own"
            );
        }
        let kafka = settings.kafka();
        if !kafka.static_membership() {
            tracing::warn!(
                session_timeout_ms = kafka.session_timeout_ms,
                "the Kafka session timeout is too short for static membership: a restarted process waits for its predecessor to expire before it owns partitions again"
            );
        }
        {
            let kafka = kafka.clone();
            tokio::task::spawn_blocking(move || kafka.check_topics())
                .await?
                .context("checking the Kafka topics")?;
        }
        // Shutdown runs in two steps: `shutdown` stops the HTTP server (which
        // drains the requests in flight, whose commands must still be decided)
        // and closes sockets with "going away"; then `roles` stops the rest.
        let shutdown = CancellationToken::new();
        let roles_stop = CancellationToken::new();
        {
            let db = db::connect(&settings.database_url, 1)
                .await
                .context("connecting to PostgreSQL")?;
            db::migrate(&db).await.context("migrating PostgreSQL")?;
            db.close().await;
        }
        let pool = |role: &str, size: u32| {
            db::role_pool(&settings.database_url, role, size)
                .with_context(|| format!("configuring the PostgreSQL pool of {role}"))
        };
        let cache =
            Cache::new(&settings.redis_url, &settings.redis_prefix).context("configuring Redis")?;
        let mut tasks = JoinSet::new();
        let board = RoleBoard::default();
        let api_db = pool("api", settings.database_pool)?;
        let progress = db::Progress::new(api_db.clone());
        let mut supervised = |role: &'static str,
                              owned: Option<Owned>,
                              start: Box<
            dyn FnMut() -> futures_util::future::BoxFuture<'static, anyhow::Result<()>> + Send,
        >| {
            let run = supervise(role, board.clone(), owned, roles_stop.clone(), start);
            tasks.spawn(async move { (role, run.await) });
        };

        // Roles of this process hand each other their records as the broker
        // took them, ahead of the topics (a shortcut no role here reads
        // stays closed and costs nothing).
        let bus_shortcuts = BusShortcuts::default();
        let events_shortcut = Shortcut::default();
        let updates_shortcut = Shortcut::default();
        if roles.contains(&Role::Deciders) {
            let owned = Owned::default();
            let settings = DeciderSettings {
                kafka: kafka.clone(),
                snapshot_every: settings.snapshot_every,
                owned: owned.clone(),
                shortcuts: DeciderShortcuts {
                    bus: bus_shortcuts.clone(),
                    events: events_shortcut.clone(),
                },
            };
            let (db, stop) = (pool("deciders", ROLE_POOL)?, roles_stop.clone());
            supervised(
                "deciders",
                Some(owned),
                Box::new(move || decider::run(settings.clone(), db.clone(), stop.clone()).boxed()),
            );
        }
        let presence = Presence::new(&settings.redis_url, &settings.redis_prefix)
            .context("configuring presence in Redis")?;
        if roles.contains(&Role::Projector) {
            let mail = settings.mail.clone();
            let presence = presence.clone();
            let owned = Owned::default();
            let settings = ProjectorSettings {
                kafka: kafka.clone(),
                owned: owned.clone(),
                progress: progress.clone(),
                events: events_shortcut.clone(),
                updates: updates_shortcut.clone(),
            };
            let (db, stop, cache) = (
                pool("projector", ROLE_POOL)?,
                roles_stop.clone(),
                cache.clone(),
            );
            supervised(
                "projector",
                Some(owned),
                Box::new(move || {
                    projector::run(
                        settings.clone(),
                        db.clone(),
                        Some(cache.clone()),
                        stop.clone(),
                    )
                    .boxed()
                }),
            );
            let (db, stop, kafka) = (
                pool("outbox-relay", ROLE_POOL)?,
                roles_stop.clone(),
                kafka.clone(),
            );
            supervised(
                "outbox relay",
                None,
                Box::new(move || {
                    outbox::relay(
                        db.clone(),
                        kafka.clone(),
                        outbox::Retention::default(),
                        stop.clone(),
                    )
                    .boxed()
                }),
            );
            // Mail goes with the projector: it is what queues confirmations.
            if mail.smtp_url.is_some() {
                let (db, stop, mail) =
                    (pool("mailer", ROLE_POOL)?, roles_stop.clone(), mail.clone());
                supervised(
                    "mailer",
                    None,
                    Box::new(move || {
                        crate::mailer::send(db.clone(), mail.clone(), stop.clone()).boxed()
                    }),
                );
            } else {
                tracing::warn!("TIDINGS_SMTP_URL is not set: mail is queued, not sent");
            }
            let (db, stop) = (pool("mail-upkeep", ROLE_POOL)?, roles_stop.clone());
            supervised(
                "mail upkeep",
                None,
                Box::new(move || {
                    crate::mailer::upkeep(db.clone(), presence.clone(), mail.clone(), stop.clone())
                        .boxed()
                }),
            );
        }

        let serves_http = roles.contains(&Role::Api) || roles.contains(&Role::Realtime);
        let bus =
            if serves_http || roles.contains(&Role::Deciders) || roles.contains(&Role::Webhooks) {
                let bus = CommandBus::connect(
                    &kafka,
                    settings.command_timeout(),
                    bus_shortcuts.clone(),
                    roles_stop.clone(),
                )
                .await
                .context("connecting the command bus")?;
                Some(bus)
            } else {
                None
            };
        // The media store: the API stores uploads in it, the media sweeper
        // (beside the deciders) removes what no post took.
        let media_store = if roles.contains(&Role::Api) || roles.contains(&Role::Deciders) {
            Some(
                tidings_api::media::store(settings.media_store.as_deref(), &settings.media_dir)
                    .context("configuring the media store")?,
            )
        } else {
            None
        };
        if let (true, Some(bus), Some(store)) =
            (roles.contains(&Role::Deciders), &bus, &media_store)
        {
            let unused_for = Duration::from_secs(settings.media_unused_secs);
            let (bus, db, store, stop) = (
                bus.clone(),
                pool("media-sweeper", 1)?,
                store.clone(),
                roles_stop.clone(),
            );
            supervised(
                "media sweeper",
                None,
                Box::new(move || {
                    crate::media_sweeper::run(
                        bus.clone(),
                        db.clone(),
                        store.clone(),
                        unused_for,
                        stop.clone(),
                    )
                    .boxed()
                }),
            );
        }
        if let (true, Some(bus)) = (roles.contains(&Role::Deciders), &bus) {
            let older_than = Duration::from_secs(settings.registration_timeout_secs);
            let (bus, db, stop) = (bus.clone(), pool("sweeper", 1)?, roles_stop.clone());
            supervised(
                "registration sweeper",
                None,
                Box::new(move || {
                    crate::sweeper::run(bus.clone(), db.clone(), older_than, stop.clone()).boxed()
                }),
            );
        }
        if let (true, Some(bus)) = (roles.contains(&Role::Webhooks), &bus) {
            let (bus, db, stop, kafka, webhooks) = (
                bus.clone(),
                pool("webhooks", 4)?,
                roles_stop.clone(),
                kafka.clone(),
                settings.webhooks.clone(),
            );
            supervised(
                "webhooks",
                None,
                Box::new(move || {
                    crate::webhooks::run(
                        kafka.clone(),
                        db.clone(),
                        bus.clone(),
                        webhooks.clone(),
                        stop.clone(),
                    )
                    .boxed()
                }),
            );
        }
        let (mut port, mut server, mut handle) = (None, None, None);
        let limits = Arc::new(settings.limits.limits());
        if let (true, Some(bus)) = (serves_http, bus) {
            // Readers here also hear of the commits of projectors elsewhere.
            let (listen_db, stop, listening) =
                (pool("progress", 1)?, roles_stop.clone(), progress.clone());
            supervised(
                "progress listener",
                None,
                Box::new(move || {
                    listening
                        .clone()
                        .listen(listen_db.clone(), stop.clone())
                        .boxed()
                }),
            );
            let state = web::Data::new(ApiState {
                db: api_db,
                progress,
                cache: cache.clone(),
                bus,
                jwt: Jwt::new(&settings.jwt_secret, settings.token_ttl()),
                settings: ApiSettings {
                    min_position_wait: settings.min_position_wait(),
                    partitions: settings.partitions,
                    password_reset_ttl: settings.mail.password_reset_ttl(),
                    forgot_interval: settings.mail.forgot_interval(),
                    mail_queue_max: settings.mail.mail_queue_max,
                    admins: settings.admins(),
                    kafka: settings.kafka(),
                    destinations: Destinations::new(&settings.webhooks.webhook_allow)
                        .map_err(|e| anyhow::anyhow!("TIDINGS_WEBHOOK_ALLOW: {e}"))?,
                },
                limits: limits.clone(),
            });
            let media = media_store.map(|store| {
                web::Data::new(MediaService::new(
                    store,
                    MediaSettings {
                        image_max_bytes: settings.media_image_max_bytes,
                        video_max_bytes: settings.media_video_max_bytes,
                        max_dimension: settings.media_max_dimension,
                        max_decode_bytes: settings.media_max_decode_bytes,
                        decode_slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
                    },
                ))
            });
            let idempotency = web::Data::new(tidings_api::idempotency::Idempotency::new(
                state.db.clone(),
                state.jwt.clone(),
                &settings.jwt_secret,
            ));
            let (prune_db, stop) = (pool("idempotency-pruner", 1)?, roles_stop.clone());
            supervised(
                "idempotency pruner",
                None,
                Box::new(move || {
                    tidings_api::idempotency::prune(prune_db.clone(), stop.clone()).boxed()
                }),
            );
            let hub = if roles.contains(&Role::Realtime) {
                let hub = web::Data::new(
                    Hub::start(
                        &tidings_schemas::kafka::KafkaSettings {
                            fetch_wait_ms: settings
                                .ws_fetch_wait_ms
                                .unwrap_or(settings.kafka_fetch_wait_ms),
                            ..kafka.clone()
                        },
                        updates_shortcut.clone(),
                        shutdown.clone(),
                    )
                    .await?,
                );
                // The gateway checks tokens as the API does, without
                // depending on it.
                let gateway = web::Data::new(Gateway {
                    db: pool("realtime", settings.database_pool)?,
                    auth: state.clone().into_inner(),
                    presence: Some(presence.clone()),
                    frames_per_second: std::num::NonZeroU32::new(settings.ws_frames_per_second)
                        .context("TIDINGS_WS_FRAMES_PER_SECOND is at least 1")?,
                    limits: limits.clone(),
                    queue_bytes: settings.ws_queue_bytes as usize,
                    ring: Some(cache.clone()),
                });
                // Presence and typing between gateways (Redis pub/sub), and
                // the sweep that announces users of a dead gateway offline.
                tokio::spawn(tidings_realtime::presence::relay(
                    presence.clone(),
                    gateway.db.clone(),
                    hub.get_ref().clone(),
                ));
                // Updates committed by the projectors of other processes.
                tokio::spawn(tidings_realtime::hub::follow_updates(
                    presence.clone(),
                    hub.get_ref().clone(),
                ));
                tokio::spawn(tidings_realtime::presence::sweep(
                    presence.clone(),
                    shutdown.clone(),
                ));
                Some((hub, gateway))
            } else {
                None
            };
            let (with_api, with_realtime) = (roles.contains(&Role::Api), hub.is_some());
            let asyncapi = tidings_schemas::asyncapi::document(&kafka, env!("CARGO_PKG_VERSION"));
            let spec = web::Data::new(tidings_api::docs::Spec::new(openapi(), &asyncapi));
            let metrics = web::Data::new(tidings_api::health::Metrics(Box::new({
                let board = board.clone();
                move || {
                    // Refreshes the role gauges.
                    board.reports();
                    crate::telemetry::render_metrics()
                }
            })));
            let role_reports = web::Data::new(Roles(Box::new({
                let board = board.clone();
                move || board.reports()
            })));
            let (db, stop, kafka) = (pool("lag-monitor", 1)?, roles_stop.clone(), kafka.clone());
            supervised(
                "lag monitor",
                None,
                Box::new(move || lag::monitor(kafka.clone(), db.clone(), stop.clone()).boxed()),
            );
            let listener = TcpListener::bind(&settings.http_addr)
                .with_context(|| format!("binding {}", settings.http_addr))?;
            port = Some(listener.local_addr()?.port());
            let http = HttpServer::new(move || {
                let mut app = App::new()
                    .app_data(state.clone())
                    .app_data(metrics.clone())
                    .app_data(role_reports.clone())
                    .app_data(spec.clone())
                    .app_data(idempotency.clone())
                    .wrap(from_fn(tidings_api::idempotency::middleware))
                    .wrap(from_fn(tidings_api::json_objects))
                    .wrap(from_fn(tidings_api::middleware::read_your_writes))
                    .wrap(from_fn(tidings_api::limits::middleware))
                    .wrap(from_fn(tidings_api::middleware::http_metrics))
                    .wrap(from_fn(tidings_api::middleware::request_id))
                    .default_service(web::to(tidings_api::not_found));
                if let Some(media) = &media {
                    app = app.app_data(media.clone());
                }
                app = app.configure(tidings_api::operations);
                if with_api {
                    app = app.configure(tidings_api::routes);
                }
                if let Some((hub, gateway)) = &hub {
                    app = app.app_data(hub.clone()).app_data(gateway.clone());
                }
                if with_realtime {
                    app = app.configure(tidings_realtime::routes);
                }
                app
            })
            .workers(settings.http_workers)
            .on_connect(bound_unsent)
            .shutdown_timeout(SHUTDOWN_GRACE_SECS)
            .disable_signals();
            let http = match (&settings.tls_cert, &settings.tls_key) {
                (Some(cert), Some(key)) => {
                    http.listen_rustls_0_23(listener, tls_config(cert, key)?)?
                }
                _ => http.listen(listener)?,
            }
            .run();
            handle = Some(http.handle());
            server = Some(http);
        }
        let (stop, then) = (shutdown.clone(), roles_stop);
        tokio::spawn(async move {
            stop.cancelled().await;
            if let Some(handle) = handle {
                handle.stop(true).await;
            }
            then.cancel();
        });
        Ok(Application {
            port,
            server,
            tasks,
            shutdown,
        })
    }

    /// The HTTP port, when this application serves HTTP.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// A token that stops the application when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until shut down, or until the HTTP server stops.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        if let Some(server) = self.server.take() {
            let shutdown = self.shutdown.clone();
            self.tasks.spawn(async move {
                let result = server.await.map_err(anyhow::Error::from);
                shutdown.cancel();
                ("http server", result)
            });
        }
        let mut outcome = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let (role, result) = joined.context("a role panicked")?;
            if let Err(error) = result {
                tracing::error!(role, error = format!("{error:#}"), "stopped with an error");
                if outcome.is_ok() {
                    outcome = Err(error.context(format!("{role} failed")));
                }
            }
            self.shutdown.cancel();
        }
        outcome
    }
}

/// The OpenAPI document of everything this binary can serve.
/// Bytes a connection's socket holds unsent in the kernel before a write
/// waits.
const UNSENT_LOWAT: u32 = 16 * 1024;

/// Bounds what the kernel holds unsent for each connection
/// (`TCP_NOTSENT_LOWAT`; what is in flight still grows with the path, so
/// large downloads keep their speed). Without it the kernel would take
/// megabytes for a client that does not read (loopback autotunes the send
/// buffer to 4 MiB), and a WebSocket's own queue, where frames are
/// conflated, dropped or end the session (`realtime/src/socket.rs`), would
/// never fill.
fn bound_unsent(connection: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::rt::net::TcpStream;
    let tcp = match connection.downcast_ref::<TcpStream>() {
        Some(tcp) => tcp,
        None => match connection.downcast_ref::<TlsStream<TcpStream>>() {
            Some(tls) => tls.get_ref().0,
            None => return,
        },
    };
    if let Err(error) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(UNSENT_LOWAT) {
        tracing::debug!(%error, "TCP_NOTSENT_LOWAT");
    }
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let mut spec = tidings_api::docs::ApiDoc::openapi();
    spec.merge(tidings_realtime::RealtimeDoc::openapi());
    spec
}

/// The TLS configuration of a certificate chain and key in PEM files, with
/// the ring provider named explicitly (several may be linked in).
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A role that fails three times is started again after 0.5, 1 and 2 s,
    /// reported as restarting meanwhile, and as running once it holds.
    #[tokio::test]
    async fn a_failing_role_is_started_again_after_growing_pauses() {
        let board = RoleBoard::default();
        let stop = CancellationToken::new();
        let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let run = tokio::spawn(supervise("flaky", board.clone(), None, stop.clone(), {
            let (starts, stop) = (starts.clone(), stop.clone());
            move || {
                let (starts, stop) = (starts.clone(), stop.clone());
                async move {
                    let attempt = {
                        let mut starts = starts.lock().unwrap();
                        starts.push(Instant::now());
                        starts.len()
                    };
                    match attempt {
                        1 | 2 => anyhow::bail!("down"),
                        3 => panic!("worse"),
                        _ => {
                            stop.cancelled().await;
                            Ok(())
                        }
                    }
                }
            }
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(board.reports()[0].state, "restarting");
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        let reports = board.reports();
        assert_eq!(
            (reports[0].state.as_str(), reports[0].ready),
            ("running", true)
        );
        let starts = starts.lock().unwrap().clone();
        let pauses: Vec<u128> = starts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        // Each at least its pause, and not much more: the attempts' own time
        // (a panic's backtrace, when RUST_BACKTRACE asks for one) adds some.
        for (pause, expected) in pauses.iter().zip([500, 1_000, 2_000]) {
            assert!(
                (expected..expected + 700).contains(pause),
                "pauses {pauses:?} ms, not 0.5, 1 and 2 s"
            );
        }
        assert_eq!(pauses.len(), 3, "{pauses:?}");
        stop.cancel();
        run.await.unwrap().unwrap();
        assert_eq!(board.reports()[0].state, "stopped");
    }

    /// A group member that owns no partition is running but not ready.
    #[test]
    fn a_role_owning_nothing_is_not_ready() {
        let board = RoleBoard::default();
        let owned = Owned::default();
        board.set("deciders", RoleState::Running, Some(&owned));
        let report = &board.reports()[0];
        assert_eq!((report.partitions, report.ready), (Some(0), false));
    }
}

//! The application: the roles asked for, started against the services given.
//!
//! `Application::build` connects to PostgreSQL, Redis and Kafka, binds the
//! HTTP listener (port 0 in tests, see [`Application::port`]) and starts each
//! role as a task. If any role stops with an error, the whole application
//! stops with it: a half-running Tidings is worse than a restarted one.

use std::collections::HashSet;
use std::net::TcpListener;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use tidings_api::auth::Jwt;
use tidings_api::{ApiSettings, ApiState};
use tidings_commands::decider::{self, DeciderSettings};
use tidings_commands::CommandBus;
use tidings_projections::projector::{self, ProjectorSettings};
use tidings_projections::{db, lag, outbox, Cache};
use tidings_realtime::{Gateway, Hub};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::settings::{Role, Settings, DEV_JWT_SECRET};

/// How long in-flight HTTP requests and sockets get to finish at shutdown.
const SHUTDOWN_GRACE_SECS: u64 = 5;

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
        // Shutdown runs in two steps: `shutdown` stops the HTTP server (which
        // drains the requests in flight, whose commands must still be decided)
        // and closes sockets with "going away"; then `roles` stops the rest.
        let shutdown = CancellationToken::new();
        let roles_stop = CancellationToken::new();
        let db = db::connect(&settings.database_url, settings.database_pool)
            .await
            .context("connecting to PostgreSQL")?;
        db::migrate(&db).await.context("migrating PostgreSQL")?;
        let cache =
            Cache::new(&settings.redis_url, &settings.redis_prefix).context("configuring Redis")?;
        let mut tasks = JoinSet::new();

        if roles.contains(&Role::Deciders) {
            let settings = DeciderSettings {
                kafka: kafka.clone(),
                snapshot_every: settings.snapshot_every,
            };
            let run = decider::run(settings, db.clone(), roles_stop.clone());
            tasks.spawn(async move { ("deciders", run.await) });
        }
        if roles.contains(&Role::Projector) {
            let settings = ProjectorSettings {
                kafka: kafka.clone(),
            };
            let run = projector::run(
                settings,
                db.clone(),
                Some(cache.clone()),
                roles_stop.clone(),
            );
            tasks.spawn(async move { ("projector", run.await) });
            let relay = outbox::relay(
                db.clone(),
                kafka.clone(),
                outbox::Retention::default(),
                roles_stop.clone(),
            );
            tasks.spawn(async move { ("outbox relay", relay.await) });
        }

        let serves_http = roles.contains(&Role::Api) || roles.contains(&Role::Realtime);
        let bus = if serves_http || roles.contains(&Role::Deciders) {
            let bus = CommandBus::connect(&kafka, settings.command_timeout(), roles_stop.clone())
                .await
                .context("connecting the command bus")?;
            Some(bus)
        } else {
            None
        };
        if let (true, Some(bus)) = (roles.contains(&Role::Deciders), &bus) {
            let older_than = std::time::Duration::from_secs(settings.registration_timeout_secs);
            let sweep =
                crate::sweeper::run(bus.clone(), db.clone(), older_than, roles_stop.clone());
            tasks.spawn(async move { ("registration sweeper", sweep.await) });
        }

        let (mut port, mut server, mut handle) = (None, None, None);
        if let (true, Some(bus)) = (serves_http, bus) {
            let state = web::Data::new(ApiState {
                db: db.clone(),
                cache: cache.clone(),
                bus,
                jwt: Jwt::new(&settings.jwt_secret, settings.token_ttl()),
                settings: ApiSettings {
                    min_position_wait: settings.min_position_wait(),
                },
            });
            let hub = if roles.contains(&Role::Realtime) {
                let hub = web::Data::new(Hub::start(&kafka, shutdown.clone()).await?);
                // The gateway checks tokens as the API does, without
                // depending on it.
                let gateway = web::Data::new(Gateway {
                    db: db.clone(),
                    auth: state.clone().into_inner(),
                });
                Some((hub, gateway))
            } else {
                None
            };
            let (with_api, with_realtime) = (roles.contains(&Role::Api), hub.is_some());
            let asyncapi = tidings_schemas::asyncapi::document(&kafka, env!("CARGO_PKG_VERSION"));
            let spec = web::Data::new(tidings_api::docs::Spec::new(openapi(), &asyncapi));
            let metrics = web::Data::new(tidings_api::health::Metrics(Box::new(
                crate::telemetry::render_metrics,
            )));
            let monitor = lag::monitor(kafka.clone(), db.clone(), roles_stop.clone());
            tasks.spawn(async move { ("lag monitor", monitor.await) });
            let listener = TcpListener::bind(&settings.http_addr)
                .with_context(|| format!("binding {}", settings.http_addr))?;
            port = Some(listener.local_addr()?.port());
            let http = HttpServer::new(move || {
                let mut app = App::new()
                    .app_data(state.clone())
                    .app_data(metrics.clone())
                    .app_data(spec.clone())
                    .wrap(from_fn(tidings_api::json_objects))
                    .wrap(from_fn(tidings_api::middleware::read_your_writes))
                    .wrap(from_fn(tidings_api::middleware::http_metrics))
                    .wrap(from_fn(tidings_api::middleware::request_id))
                    .default_service(web::to(tidings_api::not_found));
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

    /// Runs until shut down, or until a role fails.
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
                tracing::error!(role, error = format!("{error:#}"), "role failed; stopping");
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

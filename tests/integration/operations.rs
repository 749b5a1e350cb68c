//! What operators rely on: metrics, readiness, documentation.

use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, Client, Socket, World, ALL_ROLES};

/// The value of the sample of `name` whose labels include every pair.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

pub(crate) async fn metrics(client: &Client) -> String {
    let reply = client.send(client.get("/metrics")).await;
    assert_eq!(reply.status, 200);
    reply.body.as_str().unwrap_or_default().to_owned()
}

/// With every role in one process, records go from role to role without
/// waiting on a fetch: the shortcuts are taken, not only offered.
#[tokio::test]
async fn the_roles_of_one_process_hand_records_over_without_the_topics() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, token, _) = client.user("sol").await;
    for bio in ["one", "two", "three"] {
        let reply = client
            .send(
                client
                    .patch("/api/profile")
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "bio": bio })),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let exported = metrics(&client).await;
    let taken = sample(&exported, "tidings_shortcut_taken_total", &[]);
    assert!(taken.is_some_and(|n| n >= 3.0), "taken: {taken:?}");
    // Their outcomes went straight to the waiting requests, not through
    // tidings.command-results.
    let kept = sample(&exported, "tidings_results_kept_local_total", &[]);
    assert!(kept.is_some_and(|n| n >= 3.0), "kept local: {kept:?}");
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn metrics_are_exported_and_move_with_traffic() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (id, token, position) = client.user("mia").await;
    let profile = client.own_profile(&token, &position).await;
    assert_eq!(profile.status, 200);
    // Public profiles are read through the cache.
    let public = client.send(client.get(&format!("/api/users/{id}"))).await;
    assert_eq!(public.status, 200);
    let first = metrics(&client).await;
    let registered = sample(
        &first,
        "tidings_http_requests_total",
        &[
            ("route", "/api/auth/register"),
            ("method", "POST"),
            ("status", "201"),
        ],
    );
    assert_eq!(registered, Some(1.0), "{first}");
    assert_eq!(
        sample(
            &first,
            "tidings_commands_total",
            &[("type", "claim.claim"), ("outcome", "accepted")]
        ),
        Some(2.0)
    );
    assert!(sample(
        &first,
        "tidings_http_request_duration_seconds_bucket",
        &[("route", "/api/profile"), ("le", "+Inf")]
    )
    .is_some());
    assert!(
        sample(
            &first,
            "tidings_cache_requests_total",
            &[("cache", "account")]
        )
        .is_some(),
        "{first}"
    );

    // More traffic moves the counters; a socket shows up and gets a delivery.
    let mut socket = Socket::connect(&app.base, &token).await;
    assert_eq!(client.user("ned").await.0.len(), 36);
    let reply = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"bio": "metered"})),
        )
        .await;
    assert_eq!(reply.status, 200);
    let event = socket.expect("event").await;
    assert_eq!(event["event"], "profile.updated");
    let second = metrics(&client).await;
    assert_eq!(
        sample(
            &second,
            "tidings_http_requests_total",
            &[("route", "/api/auth/register"), ("status", "201")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &second,
            "tidings_commands_total",
            &[("type", "account.update_profile"), ("outcome", "accepted")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&second, "tidings_ws_connections", &[]),
        Some(1.0),
        "{second}"
    );
    assert!(sample(&second, "tidings_ws_deliveries_total", &[]).is_some_and(|n| n >= 1.0));
    assert!(sample(&second, "tidings_projector_events_total", &[]).is_some_and(|n| n >= 6.0));

    // Lag and backlog gauges come from the monitor, every few seconds.
    eventually(Duration::from_secs(15), "lag gauges appear", || async {
        let text = metrics(&client).await;
        sample(&text, "tidings_projector_lag_events", &[("partition", "0")]).is_some()
            && sample(&text, "tidings_decider_lag_commands", &[("partition", "0")]).is_some()
            && sample(&text, "tidings_outbox_backlog", &[]).is_some()
    })
    .await;
    app.stop().await;
    world.clean_up().await;
}

/// Every `.route("<path>", web::<method>()…)` in the sources of the HTTP
/// crates, as `(METHOD, path)`.
fn mounted_routes() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut routes = Vec::new();
    for dir in ["api/src", "realtime/src"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let code: Vec<&str> = source
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            let flat: String = code.join(" ").split_whitespace().collect();
            for piece in flat.split(".route(\"").skip(1) {
                let (path, rest) = piece.split_once('"').unwrap();
                let method = rest
                    .trim_start_matches(',')
                    .strip_prefix("web::")
                    .and_then(|m| m.split_once('('))
                    .map(|(m, _)| m.to_uppercase())
                    .unwrap_or_else(|| panic!("cannot read the method of route {path}"));
                // `{name:regex}` in actix is `{name}` in OpenAPI.
                let path: String = path
                    .split('/')
                    .map(|part| match part.split_once(':') {
                        Some((name, _)) if part.starts_with('{') => format!("{name}}}"),
                        _ => part.to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                routes.push((method, path));
            }
        }
    }
    routes
}

#[tokio::test]
async fn the_spec_describes_every_route_and_the_docs_page_is_self_contained() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let spec = client.send(client.get("/openapi.json")).await;
    assert_eq!(spec.status, 200);
    assert!(
        spec.body["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec.body["openapi"]
    );
    assert!(spec.body["components"]["securitySchemes"]["bearer"].is_object());

    let routes = mounted_routes();
    assert!(
        routes.len() >= 10,
        "the route scan found too little: {routes:?}"
    );
    let missing: Vec<String> = routes
        .iter()
        .filter(|(method, path)| spec.body["paths"][path][method.to_lowercase()].is_null())
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert!(missing.is_empty(), "routes the spec lacks: {missing:?}");
    // Error answers are documented as problem+json.
    let conflict = &spec.body["paths"]["/api/auth/register"]["post"]["responses"]["409"]["content"];
    assert!(
        conflict["application/problem+json"]["schema"].is_object(),
        "{conflict}"
    );

    let page = client.send(client.get("/docs")).await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.body.as_str().unwrap().to_owned();
    for (_, path) in &routes {
        assert!(
            html.contains(path.as_str()),
            "the docs page does not show {path}"
        );
    }
    let assets: Vec<&str> = ["href=\"", "src=\""]
        .iter()
        .flat_map(|attr| {
            html.split(attr)
                .skip(1)
                .map(|rest| rest.split('"').next().unwrap())
        })
        .filter(|link| !link.starts_with('#'))
        .collect();
    assert!(assets.contains(&"/docs/style.css"), "{assets:?}");
    for asset in assets {
        assert!(
            asset.starts_with('/'),
            "the docs page loads {asset} from elsewhere"
        );
        let reply = client.send(client.get(asset)).await;
        assert_eq!(reply.status, 200, "{asset}");
    }
    app.stop().await;
    world.clean_up().await;
}

/// Every `$ref` in a JSON document.
fn refs(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", serde_json::Value::String(target)) => found.push(target.clone()),
                    _ => refs(inner, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| refs(i, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_asyncapi_document_covers_the_socket_and_topics_and_its_references_resolve() {
    let world = World::new().await;
    let app = world.start(&[tidings::Role::Api]).await;
    let client = Client::new(&app.base);
    let doc = client.send(client.get("/asyncapi.json")).await;
    assert_eq!(doc.status, 200);
    let doc = doc.body;
    assert_eq!(doc["asyncapi"], "3.0.0");
    let addresses: Vec<&str> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    let topics = world.settings.kafka().topics();
    for expected in ["/ws"].into_iter().chain(topics.all()) {
        assert!(
            addresses.contains(&expected),
            "no channel {expected}: {addresses:?}"
        );
    }
    for (event_type, version, _) in tidings_schemas::json::events() {
        let name = format!("{event_type}.v{version}");
        assert!(
            doc["channels"]["events"]["messages"][&name].is_object(),
            "events topic lacks {name}"
        );
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    let external: Vec<&String> = found
        .iter()
        .filter(|r| r.starts_with("/schemas/"))
        .collect();
    assert!(external.len() > 8, "{found:?}");
    for target in found.iter() {
        if let Some(pointer) = target.strip_prefix('#') {
            assert!(doc.pointer(pointer).is_some(), "{target} points nowhere");
        } else {
            let schema = client.send(client.get(target)).await;
            assert_eq!(schema.status, 200, "{target}");
            assert!(
                schema.body["$schema"].is_string(),
                "{target} is not a JSON Schema"
            );
        }
    }
    assert_eq!(
        client.send(client.get("/schemas/nope.json")).await.status,
        404
    );
    app.stop().await;
    world.clean_up().await;
}

fn tidings(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TIDINGS_")) {
        command.env_remove(key);
    }
    command
        .envs(env.iter().copied())
        .output()
        .expect("the tidings binary runs")
}

fn keys(settings: &str) -> Vec<String> {
    let mut keys: Vec<String> = settings
        .lines()
        // A setting left unset is listed commented out: `# TIDINGS_X=`.
        .map(|l| l.trim_start_matches("# "))
        .filter(|l| l.starts_with("TIDINGS_"))
        .map(|l| l.split('=').next().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[test]
fn the_effective_settings_come_from_flags_env_and_file_with_secrets_masked() {
    let file = std::env::temp_dir().join(format!("tidings-{}.env", uuid::Uuid::new_v4()));
    std::fs::write(
        &file,
        "TIDINGS_TOPIC_PREFIX=from_file\nTIDINGS_PARTITIONS=8\nTIDINGS_JWT_SECRET=file-secret-value\nTIDINGS_DATABASE_URL=postgres://app:pw@db:5432/t\n",
    )
    .unwrap();
    let out = tidings(
        &[
            "--config",
            file.to_str().unwrap(),
            "config",
            "--partitions",
            "6",
        ],
        &[("TIDINGS_TOPIC_PREFIX", "from_env")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains("TIDINGS_TOPIC_PREFIX=from_env\n"),
        "env wins over the file: {shown}"
    );
    assert!(
        shown.contains("TIDINGS_PARTITIONS=6\n"),
        "a flag wins over the file: {shown}"
    );
    assert!(
        shown.contains("TIDINGS_DATABASE_URL=postgres://app:***@db:5432/t\n"),
        "{shown}"
    );
    assert!(shown.contains("TIDINGS_JWT_SECRET=***\n"));
    assert!(!shown.contains("file-secret-value") && !shown.contains(":pw@"));
    std::fs::remove_file(file).unwrap();

    // .env.example lists exactly the settings there are.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    let defaults = String::from_utf8(tidings(&["config"], &[]).stdout).unwrap();
    assert_eq!(keys(&example), keys(&defaults));
}

#[test]
fn production_refuses_to_start_with_the_default_secret() {
    for args in [&["serve"][..], &["config"][..]] {
        let out = tidings(args, &[("TIDINGS_ENV", "production")]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("TIDINGS_JWT_SECRET"), "{stderr}");
    }
    let out = tidings(
        &["config"],
        &[
            ("TIDINGS_ENV", "production"),
            ("TIDINGS_JWT_SECRET", &"s".repeat(40)),
        ],
    );
    assert!(out.status.success());
}

#[test]
fn every_subcommand_explains_itself_with_an_example() {
    for command in ["serve", "migrate", "topics", "config"] {
        let out = tidings(&[command, "--help"], &[]);
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains("Example"), "{command} --help has no example");
    }
}

/// A TCP proxy in front of a real server, which the test can cut.
struct Proxy {
    port: u16,
    cut: tokio_util::sync::CancellationToken,
}

impl Proxy {
    async fn to(target: &'static str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = tokio_util::sync::CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Proxy { port, cut }
    }
}

/// The tansu binary that `scripts/stack` installed.
fn tansu() -> std::path::PathBuf {
    let home = std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo/bin/tansu");
    if home.exists() {
        home
    } else {
        "tansu".into()
    }
}

#[tokio::test]
async fn readiness_reports_each_dependency_and_flips_when_one_is_gone() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    // A broker of this test's own, to stop.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("tcp://127.0.0.1:{port}");
    let mut broker = std::process::Command::new(tansu())
        .args([
            "broker",
            "--listener-url",
            &address,
            "--advertised-listener-url",
            &address,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tansu runs");
    settings.kafka_brokers = format!("127.0.0.1:{port}");
    eventually(
        Duration::from_secs(20),
        "the test's broker takes topics",
        || async { settings.kafka().ensure_topics().await.is_ok() },
    )
    .await;
    let postgres = Proxy::to("127.0.0.1:5432").await;
    settings.database_url = settings
        .database_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", postgres.port));
    settings.command_timeout_ms = 3_000;
    let app = world.start_with(settings, &[tidings::Role::Api]).await;
    let client = Client::new(&app.base);

    let ready = client.send(client.get("/ready")).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        (
            ready.body["kafka"].as_str(),
            ready.body["postgres"].as_str()
        ),
        (Some("up"), Some("up"))
    );

    postgres.cut.cancel();
    eventually(
        Duration::from_secs(15),
        "readiness sees PostgreSQL gone",
        || async {
            let reply = client.send(client.get("/ready")).await;
            reply.status == 503 && reply.body["postgres"] == "down" && reply.body["kafka"] == "up"
        },
    )
    .await;

    broker.kill().unwrap();
    broker.wait().unwrap();
    eventually(
        Duration::from_secs(15),
        "readiness sees the broker gone",
        || async {
            let reply = client.send(client.get("/ready")).await;
            reply.status == 503 && reply.body["kafka"] == "down"
        },
    )
    .await;
    assert_eq!(
        client.send(client.get("/health")).await.status,
        200,
        "alive all the same"
    );
    // A write is answered within the command timeout, not after the
    // producer's own retries (30 s) have run out.
    let started = std::time::Instant::now();
    let reply = client.register("late", "late@example.com").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "answered after {:?}",
        started.elapsed()
    );
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn tidings_serves_rest_and_websockets_over_tls() {
    let world = World::new().await;
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(&world.name);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let mut settings = world.settings.clone();
    settings.tls_cert = Some(cert);
    settings.tls_key = Some(key);
    let app = world.start_with(settings, &ALL_ROLES).await;
    let base = app.base.replace("http://", "https://");

    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let client = Client {
        base: base.clone(),
        http: trusting,
    };
    let (user, token, _) = client.user("tess").await;
    assert_eq!(client.send(client.get("/ready")).await.status, 200);
    // Plain HTTP on the TLS port gets nowhere.
    assert!(reqwest::get(format!("{}/health", app.base)).await.is_err());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(tls));
    let mut socket = Socket::connect_tls(&base, &token, connector).await;
    let welcome = socket.expect("welcome").await;
    assert_eq!(welcome["user_id"], user.as_str());
    app.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
    world.clean_up().await;
}

#[tokio::test]
async fn a_request_id_becomes_the_correlation_id_of_its_commands_and_events() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let request_id = uuid::Uuid::new_v4();
    let reply = client
        .send(
            client
                .post("/api/auth/register")
                .header("X-Request-Id", request_id.to_string())
                .json(&json!({"username": "rid", "email": "rid@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(
        reply.headers["x-request-id"].to_str().unwrap(),
        request_id.to_string()
    );
    let events = world.events();
    assert_eq!(
        events.len(),
        4,
        "the account opened, two claims, the account registered: {events:?}"
    );
    assert!(events
        .iter()
        .all(|(_, _, e)| e.correlation_id == request_id));
    // Without one, each request gets its own.
    let other = client.send(client.get("/health")).await;
    let generated: uuid::Uuid = other.headers["x-request-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(generated, request_id);
    app.stop().await;
    world.clean_up().await;
}

/// The topics were made with one partition count: a process configured with
/// another, or started before the topics exist, refuses to start and says
/// why, instead of sending keys to other partitions than before.
#[tokio::test]
async fn a_partition_count_other_than_the_topics_refuses_to_start() {
    let world = World::new().await;
    // Whether `tidings serve` was still up after a while, and what it said.
    let serve = |settings: &tidings::Settings| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--roles", "api"])
            .envs(settings.to_env())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let up = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        (up, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let mut settings = world.settings.clone();
    settings.partitions = 3;
    let (started, stderr) = serve(&settings);
    assert!(!started, "started with the wrong partition count");
    assert!(
        stderr.contains("has 4 partitions but TIDINGS_PARTITIONS is 3"),
        "{stderr}"
    );

    let mut settings = world.settings.clone();
    settings.topic_prefix = format!("{}_missing", world.name);
    let (started, stderr) = serve(&settings);
    assert!(!started, "started without its topics");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("tidings topics"), "{stderr}");
    world.clean_up().await;
}

/// The projector fails on every batch (PostgreSQL refuses its writes): it is
/// started again and again with a growing pause, `/ready` and the metrics say
/// so, and meanwhile the API and the deciders keep serving. Once PostgreSQL
/// takes the writes again, the projector catches up on its own.
#[tokio::test]
async fn a_failing_role_is_restarted_while_the_others_keep_serving() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.min_position_wait_ms = 1_000;
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (id, token, position) = client.user("rex").await;
    assert_eq!(client.own_profile(&token, &position).await.status, 200);

    let db = world.db().await;
    for statement in [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
        "CREATE TRIGGER refuse BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION refuse()",
    ] {
        sqlx::query(statement).execute(&db).await.unwrap();
    }
    let patched = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"bio": "projected after the failure"})),
        )
        .await;
    assert_eq!(patched.status, 202, "{}", patched.body);
    let patched_at = patched.body["position"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(15),
        "the projector is restarted",
        || async {
            let text = metrics(&client).await;
            sample(
                &text,
                "tidings_role_restarts_total",
                &[("role", "projector")],
            )
            .is_some_and(|n| n >= 2.0)
        },
    )
    .await;
    let ready = client.send(client.get("/ready")).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let projector = ready.body["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "projector")
        .unwrap();
    assert_eq!(projector["ready"], false, "{}", ready.body);

    // The others keep serving.
    let public = client.send(client.get(&format!("/api/users/{id}"))).await;
    assert_eq!(public.status, 200, "{}", public.body);
    assert_eq!(client.register("sue", "sue@example.com").await.status, 201);

    sqlx::query("DROP TRIGGER refuse ON accounts")
        .execute(&db)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(40),
        "the restarted projector catches up",
        || async {
            let reply = client.own_profile(&token, &patched_at).await;
            reply.status == 200 && reply.body["bio"] == "projected after the failure"
        },
    )
    .await;
    eventually(Duration::from_secs(20), "ready again", || async {
        client.send(client.get("/ready")).await.status == 200
    })
    .await;
    app.stop().await;
    world.clean_up().await;
}

/// A read that waits for a position is woken by the projector's commit, in
/// another process here (LISTEN/NOTIFY), instead of asking PostgreSQL over
/// and over while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waiting_for_a_position_is_woken_by_the_commit_not_by_polling() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.min_position_wait_ms = 30_000;
    let front = world
        .start_with(settings, &[tidings::Role::Api, tidings::Role::Deciders])
        .await;
    let client = Client::new(&front.base);
    let projector = world.spawn(
        "projector",
        &[("TIDINGS_PAUSE_AT", "projector.before_commit")],
    );
    let (_, token, position) = client.user("wendy").await;
    let read = tokio::spawn({
        let (client, token, position) = (client.clone(), token.clone(), position.clone());
        async move {
            let reply = client.own_profile(&token, &position).await;
            (reply, chrono::Utc::now())
        }
    });
    let projector = tokio::task::spawn_blocking(move || {
        projector.wait_for_line("paused at projector.before_commit", Duration::from_secs(60));
        projector
    })
    .await
    .unwrap();

    // While the read waits, how often is projector_offsets looked at?
    let db = world.db().await;
    let scans = || async {
        // Statistics reach the views about once a second.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let scans: i64 = sqlx::query_scalar(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'projector_offsets'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        scans
    };
    let before = scans().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = scans().await - before;
    assert!(!read.is_finished(), "the read did not wait");
    assert!(
        during < 40,
        "{during} looks at the projector's offsets in 4.5 s of waiting"
    );

    projector.kill();
    let _projector = world.spawn("projector", &[]);
    let (reply, answered_at) = read.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let committed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(updated_at) FROM projector_offsets")
            .fetch_one(&db)
            .await
            .unwrap();
    let latency = answered_at - committed_at;
    assert!(
        latency < chrono::Duration::milliseconds(1_000),
        "answered {latency} after the commit"
    );
    front.stop().await;
    world.clean_up().await;
}

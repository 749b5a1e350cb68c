//! The demo page (`GET /demo`, `realtime/demo/index.html`): served strict
//! (nothing from elsewhere), and driven in Chromium by
//! `tests/browser/demo.mjs`, two users chatting through it. Chromium and
//! playwright-core come from `scripts/stack up`; without them the browser
//! test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::support::{Client, World, ALL_ROLES};

/// The whole browser run: two sign-ups, a room, a chat, a dropped socket.
/// Each step of it waits at most 15 s.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);
const CHROMIUM: &str = "/usr/bin/chromium";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_demo_page_is_served_strict_and_loads_nothing_from_elsewhere() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let reply = Client::new(&app.base)
        .http
        .get(format!("{}/demo", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let header = |name: &str| {
        reply
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        header("content-type").starts_with("text/html"),
        "{}",
        header("content-type")
    );
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let body = reply.text().await.unwrap();
    assert!(body.contains("<script>"), "the page has its script inline");
    // No URL of another origin: no CDN, no font, no image from elsewhere.
    for scheme in ["http://", "https://"] {
        for (at, _) in body.match_indices(scheme) {
            assert!(
                body[at..].starts_with(&app.base),
                "the page names another origin: {}",
                body[at..].chars().take(80).collect::<String>()
            );
        }
    }
    for reference in ["src=\"//", "href=\"//", "url(//", "@import"] {
        assert!(!body.contains(reference), "the page loads {reference}…");
    }
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_through_the_demo_page_in_chromium() {
    let script = repo().join("tests/browser/demo.mjs");
    let modules = repo().join("tests/browser/node_modules/playwright-core");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/stack up (it installs Chromium and playwright-core)"
    );
    assert!(
        modules.exists(),
        "{} is missing: run scripts/stack up (it runs npm ci in tests/browser)",
        modules.display()
    );
    let screenshot: PathBuf = repo().join("target/demo-screenshot.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);

    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let started = Instant::now();
    // Its own process group, so that a timeout ends node and its Chromium.
    let child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&app.base)
        .arg(&screenshot)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (node 20 or later; scripts/stack up installs what the test needs)");
    let group = Pid::from_raw(child.id().expect("node is running") as i32);
    let output = match tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = killpg(group, Signal::SIGKILL);
            panic!("the browser test did not end within {BROWSER_TIMEOUT:?}: killed");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed ({}), screenshot in {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
        screenshot.display()
    );
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        eprintln!("{stdout}browser test: {:?}", started.elapsed());
    }
    let png = std::fs::read(&screenshot).expect("the browser test saved a screenshot");
    assert!(
        png.len() > PNG_SIGNATURE.len() && png.starts_with(PNG_SIGNATURE),
        "{} is not a PNG",
        screenshot.display()
    );
    app.stop().await;
    world.clean_up().await;
}

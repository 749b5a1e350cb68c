//! What operators rely on: metrics, readiness, documentation.

use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, Client, World, ALL_ROLES};

/// The value of the sample of `name` whose labels include every pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

async fn metrics(client: &Client) -> String {
    let reply = client.send(client.get("/metrics")).await;
    assert_eq!(reply.status, 200);
    reply.body.as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn metrics_are_exported_and_move_with_traffic() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, token, position) = client.user("mia").await;
    let profile = client
        .send(
            client
                .get("/api/profile")
                .bearer_auth(&token)
                .header("X-Min-Position", &position),
        )
        .await;
    assert_eq!(profile.status, 200);
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
    let url = format!("{}/ws?token={token}", app.base.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
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
    use futures_util::StreamExt;
    while let Some(Ok(message)) = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap()
    {
        if message
            .to_text()
            .unwrap_or_default()
            .contains("profile.updated")
        {
            break;
        }
    }
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

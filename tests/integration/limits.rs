//! Rate limits, as a client meets them: the burst goes through with the
//! `RateLimit` headers counting down, the next request is 429
//! `rate_limited` with `Retry-After`, nothing of it is done, and other
//! callers keep their own quota.

use serde_json::json;
use tidings::settings::LimitSettings;

use crate::support::{Client, Reply, World, ALL_ROLES};

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing: {:?}", reply.headers))
        .to_str()
        .unwrap()
}

/// 429 `rate_limited` naming `policy`, with a `Retry-After` of at least a
/// second and no more than the window.
fn assert_limited(reply: &Reply, policy: &str, window: u64) {
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(reply.body["code"], "rate_limited", "{}", reply.body);
    let retry_after: u64 = header(reply, "retry-after").parse().unwrap();
    assert!((1..=window).contains(&retry_after), "{retry_after}");
    // The quota is whole again no sooner than the next request fits.
    let whole: u64 = header(reply, "ratelimit")
        .rsplit_once(";t=")
        .and_then(|(_, t)| t.parse().ok())
        .unwrap();
    assert!(whole >= retry_after, "{:?}", reply.headers);
    assert!(
        header(reply, "ratelimit").starts_with(&format!("\"{policy}\";r=0;")),
        "{:?}",
        reply.headers
    );
    assert!(
        header(reply, "ratelimit-policy").starts_with(&format!("\"{policy}\";")),
        "{:?}",
        reply.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_logins_and_connections_past_their_limits_are_refused_with_retry_after() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.limits = LimitSettings {
        limit_user_writes: "1/min,3".parse().unwrap(),
        limit_ip_writes: "off".parse().unwrap(),
        limit_ip_logins: "1/min,5".parse().unwrap(),
        limit_account_logins: "1/min,2".parse().unwrap(),
        limit_ip_connects: "1/min,2".parse().unwrap(),
    };
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);

    // Registrations count against the address: two of its five.
    let (_, ann, _) = client.user("ann").await;
    let (_, ben, _) = client.user("ben").await;

    // Three writes of one user, counted down in the headers; the fourth is
    // refused and changes nothing.
    for (n, left) in [(1, 2), (2, 1), (3, 0)] {
        let reply = client
            .send(
                client
                    .patch("/api/profile")
                    .bearer_auth(&ann)
                    .json(&json!({"display_name": format!("Ann {n}")})),
            )
            .await;
        assert!([200, 202].contains(&reply.status), "{}", reply.body);
        assert_eq!(
            header(&reply, "ratelimit-policy"),
            "\"user-writes\";q=3;w=180"
        );
        assert!(
            header(&reply, "ratelimit").starts_with(&format!("\"user-writes\";r={left};t=")),
            "{:?}",
            reply.headers
        );
    }
    let refused = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&ann)
                .json(&json!({"display_name": "Ann 4"})),
        )
        .await;
    assert_limited(&refused, "user-writes", 60);
    // Another user writes on their own quota.
    let reply = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&ben)
                .json(&json!({"display_name": "Ben"})),
        )
        .await;
    assert!([200, 202].contains(&reply.status), "{}", reply.body);
    // Reads are not limited, and the refused write was not made.
    let profile = client
        .send(client.get("/api/profile").bearer_auth(&ann))
        .await;
    assert_eq!(profile.status, 200);
    assert_eq!(profile.body["display_name"], "Ann 3", "{}", profile.body);

    // Login attempts naming one account: two, by either of its names, then
    // refused before the password is tried (even the right one), whatever
    // the case typed.
    for login in ["ann", "Ann@example.com"] {
        let reply = client
            .send(
                client
                    .post("/api/auth/login")
                    .json(&json!({"login": login, "password": "wrong"})),
            )
            .await;
        assert_eq!(reply.status, 401, "{}", reply.body);
    }
    let reply = client
        .send(
            client
                .post("/api/auth/login")
                .json(&json!({"login": "ANN", "password": "correct horse battery"})),
        )
        .await;
    assert_limited(&reply, "account-logins", 60);
    // That was the address's fifth: the sixth is refused by the address
    // limit, whatever account it names.
    let reply = client
        .send(
            client
                .post("/api/auth/login")
                .json(&json!({"login": "ben", "password": "correct horse battery"})),
        )
        .await;
    assert_limited(&reply, "address-logins", 60);

    // WebSocket connections per address: two, then 429 before the upgrade.
    let url = format!(
        "{}/ws?token={ben}",
        app.base.replacen("http://", "ws://", 1)
    );
    let first = tokio_tungstenite::connect_async(&url).await.unwrap();
    let second = tokio_tungstenite::connect_async(&url).await.unwrap();
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry_after), "{retry_after}");
        }
        Ok(_) => panic!("a third connection within the minute was let in"),
        Err(error) => panic!("{error}"),
    }
    drop((first, second));
    app.stop().await;
    world.clean_up().await;
}

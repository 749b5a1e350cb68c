//! The Redis cache and read-your-writes, against a real Redis that refuses
//! the projector's writes (an ACL user without write rights).

use serde_json::json;

use crate::support::{Client, World};
use tidings::Role;

/// The projector's cache writes fail. An entry it cannot refresh is deleted;
/// when even the deletion fails, a read at a later position skips the stale
/// entry, the entry dies within a short TTL, and a token revoked in the read
/// model stops working at once although the cache still holds the old token
/// version.
#[tokio::test]
async fn a_cache_write_that_fails_never_hides_a_later_write() {
    let world = World::new().await;
    let front = world.start(&[Role::Api]).await;
    let client = Client::new(&front.base);
    // The projector's Redis refuses its script at first, but lets it delete.
    let mut backend = world.settings.clone();
    backend.redis_url = world.redis_user(&["-eval", "-evalsha"]).await;
    let back = world
        .start_with(backend, &[Role::Deciders, Role::Projector])
        .await;

    let (id, token, position) = client.user("cora").await;
    let public = |position: String| {
        let client = client.clone();
        let id = id.clone();
        async move {
            client
                .send(
                    client
                        .get(&format!("/api/users/{id}"))
                        .header("X-Min-Position", position),
                )
                .await
        }
    };
    let patch = |bio: &'static str| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let reply = client
                .send(
                    client
                        .patch("/api/profile")
                        .bearer_auth(&token)
                        .json(&json!({ "bio": bio })),
                )
                .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.body["position"].as_str().unwrap().to_owned()
        }
    };

    // A read fills the cache (the API's Redis takes writes).
    assert_eq!(public(position).await.status, 200);
    assert!(world.cached_account(&id).await.is_some(), "no entry cached");
    // The projector cannot refresh the entry: it deletes it.
    // The reply comes once the events are in the log; the projector deletes
    // the entry a moment later.
    let first = patch("first").await;
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the entry the projector could not refresh is still there",
        || async { world.cached_account(&id).await.is_none() },
    )
    .await;
    let reply = public(first).await;
    assert_eq!(reply.body["bio"], "first", "{}", reply.body);

    // Now it can neither refresh nor delete: the old entry stays, but a read
    // at the later position skips it.
    world.redis_user(&["-@write", "-eval", "-evalsha"]).await;
    assert!(world.cached_account(&id).await.is_some(), "no entry cached");
    let second = patch("second").await;
    let stale = world.cached_account(&id).await.expect("the stale entry");
    assert!(stale["json"].contains("\"first\""), "{stale:?}");
    let ttl = world.cached_account_ttl(&id).await;
    assert!(
        (1..=tidings_projections::cache::TTL_SECONDS as i64).contains(&ttl),
        "the stale entry lives {ttl} s more"
    );
    let reply = public(second).await;
    assert_eq!(reply.body["bio"], "second", "{}", reply.body);

    // The read model revokes the token (what a projected password change
    // does); the cache still holds the old token version.
    let db = world.db().await;
    sqlx::query("UPDATE accounts SET token_version = token_version + 1 WHERE id = $1")
        .bind(id.parse::<uuid::Uuid>().unwrap())
        .execute(&db)
        .await
        .unwrap();
    let cached = world.cached_account(&id).await.expect("an entry");
    assert!(cached["json"].contains("\"token_version\":0"), "{cached:?}");
    let reply = client
        .send(client.get("/api/profile").bearer_auth(&token))
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (401, Some("token_revoked")),
        "{}",
        reply.body
    );
    back.stop().await;
    front.stop().await;
    world.drop_redis_user().await;
    world.clean_up().await;
}

//! Authentication: argon2id passwords and HS256 JWTs.
//!
//! Password hashing is bounded to the cores ([`HashingLimit`]): past a short
//! queue, sign-ins and registrations are refused with 503 `overloaded`.
//!
//! A token carries the account's token version (`ver`). A password change
//! bumps the version in the account, and every token issued before stops
//! working at once: [`Authenticated`] compares the two on each request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use actix_web::{web, FromRequest, HttpRequest};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Argon2, Block, Params, Version};
use tidings_http::auth::{Authenticator, Identity, Rejection};
// JWTs and the bearer header live in `tidings-http`, shared with the gateway.
pub use tidings_http::auth::{bearer, Claims, Jwt};
use tidings_projections::accounts::AccountRow;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::error::{ApiError, Code};
use crate::ApiState;

/// How many password hashes may wait for a core, per core: about what a
/// core hashes within [`HASHING_MAX_WAIT`] (a hash takes 25–30 ms here), so
/// the cores keep hashing while the refused clients wait out `Retry-After`.
/// With 4 the queue ran dry between their returns and a burst of 1,000
/// registrations hashed on two thirds of a core. A waiting request holds no
/// argon2 memory.
const HASHING_QUEUE_PER_CORE: usize = 32;
/// The longest a hash waits for a core before the request is refused with
/// 503 `overloaded`: a few hashes' time, well under a client's timeout.
const HASHING_MAX_WAIT: Duration = Duration::from_secs(1);

/// The working memory of one argon2 run (19 MiB with the default
/// parameters), kept and reused.
type Argon2Memory = Vec<Block>;

/// Bounds password hashing (and verifying) to the cores. An argon2id hash
/// holds 19 MiB for its whole run and keeps a core busy, so running every
/// request's hash at once only multiplies memory (100 registrations at
/// concurrency 32 once took the process to 1.9 GB) without finishing any
/// sooner. At most one hash runs per core, a few wait, and the rest are
/// refused at once with 503 `overloaded`, before anything was done.
///
/// Each running hash works in one of at most `cores` memories, allocated once
/// and reused: allocating 19 MiB per hash fragments the allocator's heaps
/// until the process holds several times what runs at once (measured: 315 MB
/// of growth for 18 hashes, two at a time).
pub struct HashingLimit {
    running: Arc<Semaphore>,
    memories: Arc<Mutex<Vec<Argon2Memory>>>,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
}

impl HashingLimit {
    pub fn new(cores: usize, max_waiting: usize, max_wait: Duration) -> Self {
        HashingLimit {
            running: Arc::new(Semaphore::new(cores.max(1))),
            memories: Arc::default(),
            waiting: AtomicUsize::new(0),
            max_waiting,
            max_wait,
        }
    }

    /// Runs `work` on the blocking pool, with an argon2 memory of its own,
    /// once a core is free; or refuses it.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Argon2Memory) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = match self.running.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_core().await?,
        };
        let memories = self.memories.clone();
        // The permit goes with the work: a request dropped midway (its client
        // went away) still holds its core until the hash really ends. There
        // are never more memories than permits.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut memory = memories
                .lock()
                .ok()
                .and_then(|mut m| m.pop())
                .unwrap_or_default();
            let done = work(&mut memory);
            if let Ok(mut memories) = memories.lock() {
                memories.push(memory);
            }
            done
        })
        .await
        .map_err(ApiError::internal)
    }

    async fn wait_for_core(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        let overloaded = || {
            metrics::counter!("tidings_password_hashing_refused_total").increment(1);
            ApiError::overloaded("too many sign-ins and registrations at once; retry shortly")
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(overloaded());
        }
        // Counted out however the wait ends, the request's future dropped too.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(self.max_wait, self.running.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(ApiError::internal(closed)),
            Err(_) => Err(overloaded()),
        }
    }
}

/// The process's one bound on password hashing: a core each.
fn hashing() -> &'static HashingLimit {
    static LIMIT: LazyLock<HashingLimit> = LazyLock::new(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        HashingLimit::new(cores, cores * HASHING_QUEUE_PER_CORE, HASHING_MAX_WAIT)
    });
    &LIMIT
}

/// The argon2 output of `password` and `salt` under `argon`'s parameters,
/// computed in `memory` (grown once to what the parameters need). What
/// `PasswordHasher::hash_password` does, without allocating the memory.
fn argon2_output(
    argon: &Argon2,
    password: &[u8],
    salt: Salt,
    memory: &mut Argon2Memory,
) -> argon2::password_hash::Result<Output> {
    let mut salt_bytes = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    let blocks = argon.params().block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let length = argon
        .params()
        .output_len()
        .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    Output::init_with(length, |out| {
        Ok(argon.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])?)
    })
}

/// A PHC string of `password` with a fresh salt: argon2id, default
/// parameters (m=19456, t=2, p=1), as `Argon2::default().hash_password`.
fn hash_in(password: &[u8], memory: &mut Argon2Memory) -> argon2::password_hash::Result<String> {
    let argon = Argon2::default();
    let salt = SaltString::generate(&mut OsRng);
    let output = argon2_output(&argon, password, salt.as_salt(), memory)?;
    let hash = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params())?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `hash`, under the parameters
/// the hash names; the outputs are compared in constant time.
fn verify_in(password: &[u8], hash: &str, memory: &mut Argon2Memory) -> bool {
    let Ok(hash) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let argon = (|| {
        let algorithm = argon2::Algorithm::try_from(hash.algorithm)?;
        let version = hash
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        Ok::<_, argon2::password_hash::Error>(Argon2::new(
            algorithm,
            version,
            Params::try_from(&hash)?,
        ))
    })();
    let Ok(argon) = argon else {
        return false;
    };
    argon2_output(&argon, password, salt, memory).is_ok_and(|output| output == expected)
}

/// Hashes a password with argon2id off the async workers (it is meant to be
/// slow), within the process's [`HashingLimit`]: 503 `overloaded` beyond it.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    hashing()
        .run(move |memory| hash_in(password.as_bytes(), memory))
        .await?
        .map_err(|e| ApiError::internal(anyhow::anyhow!("hashing a password: {e}")))
}

/// A well-formed hash of no password, checked when the login names no
/// account so that a wrong login takes as long as a wrong password.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0r0hmmYmr2CJLFq0Ejx3p2BvHN8gJqpGv5jOJbKWQx8";

/// Checks a password against its hash (or against none, as long), within
/// the process's [`HashingLimit`]: 503 `overloaded` beyond it.
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, ApiError> {
    hashing()
        .run(move |memory| {
            let known = hash.is_some();
            let hash = hash.as_deref().unwrap_or(DUMMY_HASH);
            verify_in(password.as_bytes(), hash, memory) && known
        })
        .await
}

/// The signed-in caller of a request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user_id: Uuid,
    /// The account as the read model has it; `None` for an account registered
    /// an instant ago and not projected yet.
    pub account: Option<AccountRow>,
    /// When the token expires (Unix seconds): a socket closes then.
    pub expires_at: i64,
}

/// Checks a token against the account it names. The account is read from
/// PostgreSQL, in one query: its token version must come from there (a cache
/// entry whose refresh failed must not keep a revoked token working, here or
/// on any other process), and the row comes with it. A read that carries
/// `X-Min-Position` has already waited for the projector to pass it.
pub async fn authenticate(state: &ApiState, token: &str) -> Result<Authenticated, ApiError> {
    let claims = state.jwt.verify(token)?;
    let account = tidings_projections::accounts::by_id(&state.db, claims.sub).await?;
    match &account {
        Some(account) if account.token_version != claims.ver => Err(ApiError::new(
            Code::TokenRevoked,
            "the token was revoked by a password change",
        )),
        // Not projected yet: only a first-version token can be that new.
        None if claims.ver != 0 => Err(ApiError::new(Code::InvalidToken, "the token is not valid")),
        _ => Ok(Authenticated {
            user_id: claims.sub,
            account,
            expires_at: claims.exp,
        }),
    }
}

/// The gateway checks tokens the way the API does.
impl Authenticator for ApiState {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, Rejection>> + Send + 'a>> {
        Box::pin(async move {
            authenticate(self, token)
                .await
                .map(|who| Identity {
                    user_id: who.user_id,
                    expires_at: who.expires_at,
                    // A checked token carries its account's version (0 for
                    // an account not projected yet).
                    token_version: who.account.as_ref().map_or(0, |a| a.token_version),
                })
                .map_err(|error| Rejection {
                    code: error.code,
                    detail: error.detail,
                })
        })
    }
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<ApiState>>().cloned();
        let token = bearer(req).map(str::to_owned);
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::internal(anyhow::anyhow!("ApiState missing")))?;
            let token = token.ok_or_else(|| {
                ApiError::new(
                    Code::Unauthenticated,
                    "sign in: Authorization: Bearer <token>",
                )
            })?;
            authenticate(&state, &token).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_dummy_hash_is_well_formed_and_never_matches() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password("anything".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn past_the_queue_hashing_is_refused_at_once() {
        let limit = Arc::new(HashingLimit::new(1, 1, Duration::from_secs(30)));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn({
            let limit = limit.clone();
            async move { limit.run(move |_| hold.recv()).await }
        });
        // One runs, one waits: the third finds the queue full.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.run(|_| 2).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = limit.run(|_| 3).await.unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code.as_str()),
            (503, "overloaded")
        );
        assert_eq!(refused.retry_after, Some(1));
        release.send(()).unwrap();
        assert!(running.await.unwrap().is_ok());
        assert_eq!(waiting.await.unwrap().unwrap(), 2);
        // Once the queue has drained, hashing is accepted again.
        assert_eq!(limit.run(|_| 4).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn a_hash_that_waits_too_long_is_refused() {
        let limit = Arc::new(HashingLimit::new(1, 8, Duration::from_millis(200)));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn({
            let limit = limit.clone();
            async move { limit.run(move |_| hold.recv()).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = limit.run(|_| 2).await.unwrap_err();
        assert_eq!(refused.code, "overloaded");
        release.send(()).unwrap();
        assert!(running.await.unwrap().is_ok());
    }

    #[test]
    fn hashes_agree_with_the_argon2_crates_own() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let mut memory = Argon2Memory::new();
        let ours = hash_in(b"correct horse", &mut memory).unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        // The same memory, reused, for both.
        assert!(verify_in(b"correct horse", &theirs, &mut memory));
        assert!(!verify_in(b"wrong horse", &theirs, &mut memory));
        assert!(!verify_in(b"correct horse", "not a hash", &mut memory));
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_own_hash_only() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(verify_password("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!verify_password("wrong horse".into(), Some(hash))
            .await
            .unwrap());
    }
}

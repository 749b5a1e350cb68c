//! `Idempotency-Key` (API.md, Conventions): a retried write gets its first
//! answer, and nothing is done twice.
//!
//! One middleware, [`middleware`], handles every POST, PUT, PATCH and DELETE
//! that carries the header, so every write route inherits it:
//!
//! - the key is scoped to its caller: the user of a valid bearer token, or
//!   else the route (anonymous routes such as register);
//! - it is bound to a fingerprint of the request: HMAC-SHA256 of method,
//!   path and body, under a key derived from the server's JWT secret. Bodies
//!   hold passwords, and a plain hash of one could be guessed offline;
//! - the first request claims the key in PostgreSQL (`idempotency_keys`,
//!   migration 0004) with a lease that it renews while it runs, and stores
//!   its final answer;
//! - the same key and fingerprint again: the stored answer, with
//!   `Idempotent-Replayed: true`; while the first still runs: 409
//!   `idempotency_key_in_flight`; another fingerprint: 422
//!   `idempotency_key_reused`;
//! - a claim whose lease ran out (its process died) is taken over by the
//!   next retry. Command ids derive from (scope, key, fingerprint) (see
//!   [`crate::context::RequestContext::command_id`]), so the retry sends the
//!   very commands the dead attempt sent and the deciders answer them with
//!   their first outcomes: nothing is applied twice. The fingerprint is part
//!   of it so that another request with a key that expired gets commands of
//!   its own, not the first request's outcomes (its account, say).
//!
//! An upload (`POST /api/media`) is the one exception to "the middleware
//! fingerprints the body": its body is up to tens of MiB, read by its
//! handler as a stream, and a retry's multipart boundary differs anyway. The
//! middleware hands the handler a [`DeferredKey`]; the handler binds it once
//! it holds the file ([`DeferredKey::bind`], the fingerprint being of the
//! file's bytes), before anything is stored or sent; from there the claim is
//! renewed, kept and replayed as any other.
//!
//! Answers that say "not now" (401, 403, 408, 409, 429, any 5xx) are not
//! kept: the key is released and a retry runs again, under the same command
//! ids. A 409 in particular may be a lost race, which a retry must be able
//! to decide anew.
//!
//! Credentials are never stored. The `token` field of a JSON answer and the
//! `X-Token` header are replaced by their claims (user, token version); a
//! replay issues a fresh token with those claims. Only a request with the
//! same fingerprint (so the same password) can replay, and a token revoked
//! since (a password change bumps the version) stays revoked: a replay whose
//! caller's token, or whose stored credential, was revoked since is 401
//! `token_revoked`, never the first answer.

use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::{HttpMessage, HttpResponse};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::{bearer, Jwt};
use crate::error::{ApiError, Code};
use crate::error_response;

/// Set on an answer that was stored and is given again.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const X_TOKEN: HeaderName = HeaderName::from_static("x-token");
/// The longest `Idempotency-Key` accepted.
const MAX_KEY: usize = 255;
/// How long a key is kept (API.md): a retry later than that is a new request.
const KEPT_FOR: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a claim holds without renewal. A live attempt renews it every
/// [`RENEW_EVERY`]; one whose process died frees its key within this time,
/// so a client retrying after a crash is not held off for long (a process
/// restarted after `kill -9` takes writes again in about 7 s).
const LEASE: Duration = Duration::from_secs(10);
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// The largest request body fingerprinted; a larger one with a key is a 413.
/// Bodies are buffered to be fingerprinted, so this must stay small: a route
/// taking large uploads needs a streamed fingerprint first.
const MAX_BODY: usize = crate::MAX_JSON_BODY;
/// Routes whose bodies are uploads: their handlers bind the key once they
/// hold the file ([`DeferredKey`]).
const UNFINGERPRINTED: &[&str] = &["/api/media"];
/// The largest answer stored; a larger one is answered but not kept.
const MAX_ANSWER: u64 = 256 * 1024;
/// The headers of an answer that a replay gives again (with the status and
/// body); the rest belong to the moment (request id, date…).
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, X_POSITION];
const X_POSITION: HeaderName = HeaderName::from_static("x-position");
/// Rows pruned per statement: pruning never holds a long lock.
const PRUNE_BATCH: i64 = 1_000;
const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);

/// The idempotency store and what the middleware needs besides.
pub struct Idempotency {
    db: PgPool,
    jwt: Jwt,
    fingerprint_key: [u8; 32],
}

/// The key a write carries, checked and scoped: the request's handler finds
/// it in the request's extensions, and derives its command ids from it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// `user:<id>`, or `route:<METHOD> <route>` for an anonymous caller.
    pub scope: String,
    pub fingerprint: [u8; 32],
}

impl IdempotencyKey {
    /// What a command id derived from this key is a function of.
    pub fn identity(&self) -> Vec<u8> {
        let mut name = Vec::with_capacity(self.scope.len() + self.key.len() + 34);
        name.extend_from_slice(self.scope.as_bytes());
        name.push(b'\n');
        name.extend_from_slice(self.key.as_bytes());
        name.push(b'\n');
        name.extend_from_slice(&self.fingerprint);
        name
    }
}

/// An upload's `Idempotency-Key`, checked and scoped but not yet bound to
/// a fingerprint: the handler binds it once it holds the file's bytes.
#[derive(Clone)]
pub struct DeferredKey(std::sync::Arc<Deferred>);

struct Deferred {
    store: web::Data<Idempotency>,
    key: String,
    scope: String,
    method: Method,
    path: String,
    /// The claim `bind` took, for the middleware to renew and complete.
    claimed: std::sync::Mutex<Option<(IdempotencyKey, Uuid)>>,
}

/// What binding an upload's key found.
pub enum Bound {
    /// The key is this request's: its command ids derive from it.
    Mine(IdempotencyKey),
    /// The same key and the same bytes were answered before: that answer.
    Answered(HttpResponse),
}

impl DeferredKey {
    /// Claims the key for `content`, the uploaded file: the same key with
    /// other bytes is 422 `idempotency_key_reused`, with the same bytes the
    /// first answer (or 409 while the first still runs).
    pub async fn bind(&self, content: &[u8]) -> Result<Bound, ApiError> {
        let deferred = &self.0;
        let key = IdempotencyKey {
            key: deferred.key.clone(),
            scope: deferred.scope.clone(),
            fingerprint: deferred
                .store
                .fingerprint(&deferred.method, &deferred.path, content),
        };
        match deferred.store.claim(&key).await? {
            Claim::Mine(attempt) => {
                if let Ok(mut claimed) = deferred.claimed.lock() {
                    *claimed = Some((key.clone(), attempt));
                }
                Ok(Bound::Mine(key))
            }
            Claim::Replay(stored) => {
                metrics::counter!("tidings_idempotent_replays_total").increment(1);
                // The handler has checked the caller's token already.
                deferred
                    .store
                    .replay(None, stored)
                    .await
                    .map(Bound::Answered)
            }
            Claim::InFlight => Err(ApiError::idempotency_key_in_flight()),
            Claim::Reused => Err(ApiError::idempotency_key_reused()),
        }
    }

    fn claimed(&self) -> Option<(IdempotencyKey, Uuid)> {
        self.0
            .claimed
            .lock()
            .ok()
            .and_then(|claimed| claimed.clone())
    }
}

/// Where a credential sat in an answer, so that a replay puts a fresh one
/// back there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CredentialAt {
    /// The `token` field of a JSON body.
    BodyToken,
    /// The `X-Token` header.
    XTokenHeader,
}

/// A credential's claims, stored instead of the credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credential {
    at: CredentialAt,
    sub: Uuid,
    ver: i32,
}

/// A stored answer.
#[derive(Debug, sqlx::FromRow)]
struct Answer {
    status: i16,
    headers: Json<Vec<(String, String)>>,
    body: Vec<u8>,
    credentials: Json<Vec<Credential>>,
}

/// What a request finds when it presents its key.
enum Claim {
    /// The key is this request's to answer: a fresh one, an expired one, or
    /// the claim of a dead attempt whose lease ran out.
    Mine(Uuid),
    Replay(Answer),
    InFlight,
    Reused,
}

#[derive(sqlx::FromRow)]
struct Existing {
    fingerprint: Vec<u8>,
    status: Option<i16>,
    headers: Option<Json<Vec<(String, String)>>>,
    body: Option<Vec<u8>>,
    credentials: Json<Vec<Credential>>,
}

impl Idempotency {
    /// `secret` is the server's JWT secret; the fingerprint key is derived
    /// from it, so a fingerprint means nothing without the secret.
    pub fn new(db: PgPool, jwt: Jwt, secret: &str) -> Self {
        let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes a key of any length");
        derive.update(b"tidings idempotency fingerprint v1");
        Idempotency {
            db,
            jwt,
            fingerprint_key: derive.finalize().into_bytes().into(),
        }
    }

    fn fingerprint(&self, method: &Method, path: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.fingerprint_key)
            .expect("HMAC takes a key of any length");
        // Neither a method nor a path holds a newline: the parts cannot run
        // into each other.
        mac.update(method.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The caller a key belongs to: the user of a valid token, else the route.
    fn scope(&self, req: &ServiceRequest) -> String {
        match bearer(req.request()).and_then(|token| self.jwt.verify(token).ok()) {
            Some(claims) => format!("user:{}", claims.sub),
            None => {
                let route = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
                format!("route:{} {route}", req.method())
            }
        }
    }

    async fn claim(&self, key: &IdempotencyKey) -> Result<Claim, ApiError> {
        // A row vanishes between the two statements only when its attempt
        // gave the key back; a few tries always settle it.
        for _ in 0..3 {
            let attempt = Uuid::new_v4();
            // Taken: a fresh key; an expired one (a new request, whatever its
            // fingerprint); or the claim of a dead attempt of this very
            // request, which keeps the key's original expiry.
            let mine: Option<Uuid> = sqlx::query_scalar(
                "INSERT INTO idempotency_keys (scope, key, fingerprint, attempt, locked_until, expires_at)
                 VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), now() + make_interval(secs => $6))
                 ON CONFLICT (scope, key) DO UPDATE SET
                     fingerprint = EXCLUDED.fingerprint,
                     attempt = EXCLUDED.attempt,
                     locked_until = EXCLUDED.locked_until,
                     expires_at = CASE WHEN idempotency_keys.expires_at <= now()
                                       THEN EXCLUDED.expires_at
                                       ELSE idempotency_keys.expires_at END,
                     created_at = CASE WHEN idempotency_keys.expires_at <= now()
                                       THEN now()
                                       ELSE idempotency_keys.created_at END,
                     status = NULL, headers = NULL, body = NULL, credentials = '[]'
                 WHERE idempotency_keys.expires_at <= now()
                    OR (idempotency_keys.status IS NULL
                        AND idempotency_keys.locked_until <= now()
                        AND idempotency_keys.fingerprint = EXCLUDED.fingerprint)
                 RETURNING attempt",
            )
            .bind(&key.scope)
            .bind(&key.key)
            .bind(&key.fingerprint[..])
            .bind(attempt)
            .bind(LEASE.as_secs_f64())
            .bind(KEPT_FOR.as_secs_f64())
            .fetch_optional(&self.db)
            .await?;
            if let Some(attempt) = mine {
                return Ok(Claim::Mine(attempt));
            }
            let existing: Option<Existing> = sqlx::query_as(
                "SELECT fingerprint, status, headers, body, credentials FROM idempotency_keys
                 WHERE scope = $1 AND key = $2 AND expires_at > now()",
            )
            .bind(&key.scope)
            .bind(&key.key)
            .fetch_optional(&self.db)
            .await?;
            let Some(existing) = existing else { continue };
            if existing.fingerprint != key.fingerprint {
                return Ok(Claim::Reused);
            }
            return Ok(match (existing.status, existing.headers, existing.body) {
                (Some(status), Some(headers), Some(body)) => Claim::Replay(Answer {
                    status,
                    headers,
                    body,
                    credentials: existing.credentials,
                }),
                _ => Claim::InFlight,
            });
        }
        Ok(Claim::InFlight)
    }

    /// Extends a live attempt's lease.
    async fn renew(&self, key: &IdempotencyKey, attempt: Uuid) {
        let renewed = sqlx::query(
            "UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $4)
             WHERE scope = $1 AND key = $2 AND attempt = $3 AND status IS NULL",
        )
        .bind(&key.scope)
        .bind(&key.key)
        .bind(attempt)
        .bind(LEASE.as_secs_f64())
        .execute(&self.db)
        .await;
        if let Err(error) = renewed {
            tracing::warn!(%error, "renewing an idempotency lease");
        }
    }

    /// Stores an attempt's final answer, unless another attempt took the key
    /// over meanwhile (its answer is the same: the same commands).
    async fn complete(
        &self,
        key: &IdempotencyKey,
        attempt: Uuid,
        answer: &Answer,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $4, headers = $5, body = $6, credentials = $7,
                 completed_at = now()
             WHERE scope = $1 AND key = $2 AND attempt = $3",
        )
        .bind(&key.scope)
        .bind(&key.key)
        .bind(attempt)
        .bind(answer.status)
        .bind(&answer.headers)
        .bind(&answer.body)
        .bind(&answer.credentials)
        .execute(&self.db)
        .await
        .map(drop)
    }

    /// Gives an unanswered key back: the next retry runs anew.
    async fn release(db: &PgPool, key: &IdempotencyKey, attempt: Uuid) {
        let released = sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE scope = $1 AND key = $2 AND attempt = $3 AND status IS NULL",
        )
        .bind(&key.scope)
        .bind(&key.key)
        .bind(attempt)
        .execute(db)
        .await;
        if let Err(error) = released {
            // The lease frees the key in time all the same.
            tracing::warn!(%error, "releasing an idempotency key");
        }
    }

    /// Whether tokens of version `ver` still work for `user`: a password
    /// change since has revoked them. An account not projected yet has
    /// only its first version.
    async fn current(&self, user: Uuid, ver: i32) -> Result<bool, ApiError> {
        let version: Option<i32> =
            sqlx::query_scalar("SELECT token_version FROM accounts WHERE id = $1")
                .bind(user)
                .fetch_optional(&self.db)
                .await?;
        Ok(version.unwrap_or(0) == ver)
    }

    /// The stored answer as a response, with fresh credentials. A replay
    /// gives nothing a fresh request could not get: a caller whose token
    /// was revoked since, or an answer whose credential was, gets 401
    /// `token_revoked` instead.
    async fn replay(&self, token: Option<&str>, answer: Answer) -> Result<HttpResponse, ApiError> {
        let revoked = || {
            ApiError::new(
                Code::TokenRevoked,
                "the token was revoked by a password change",
            )
        };
        if let Some(claims) = token.and_then(|token| self.jwt.verify(token).ok()) {
            if !self.current(claims.sub, claims.ver).await? {
                return Err(revoked());
            }
        }
        for credential in &answer.credentials.0 {
            if !self.current(credential.sub, credential.ver).await? {
                return Err(revoked());
            }
        }
        self.replayed(answer)
    }

    /// The stored answer as a response, with fresh credentials.
    fn replayed(&self, answer: Answer) -> Result<HttpResponse, ApiError> {
        let status = u16::try_from(answer.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a stored status is not one")))?;
        let mut response = HttpResponse::build(status);
        for (name, value) in &answer.headers.0 {
            response.insert_header((name.as_str(), value.as_str()));
        }
        response.insert_header((IDEMPOTENT_REPLAYED, "true"));
        let mut body = answer.body;
        for credential in &answer.credentials.0 {
            let token = self.jwt.issue(credential.sub, credential.ver);
            match credential.at {
                CredentialAt::XTokenHeader => {
                    response.insert_header((X_TOKEN, token));
                }
                CredentialAt::BodyToken => {
                    let mut value: Value =
                        serde_json::from_slice(&body).map_err(ApiError::internal)?;
                    let object = value.as_object_mut().ok_or_else(|| {
                        ApiError::internal(anyhow::anyhow!(
                            "a stored body with a token is no object"
                        ))
                    })?;
                    object.insert("token".into(), Value::String(token));
                    body = serde_json::to_vec(&value).map_err(ApiError::internal)?;
                }
            }
        }
        Ok(response.body(body))
    }

    /// The answer as it is stored: kept headers, credentials replaced by
    /// their claims. `None` when it cannot be kept without a credential.
    fn storable(&self, status: StatusCode, headers: &HeaderMap, body: Bytes) -> Option<Answer> {
        let mut credentials = Vec::new();
        if let Some(token) = headers.get(&X_TOKEN) {
            let claims = self.jwt.verify(token.to_str().ok()?).ok()?;
            credentials.push(Credential {
                at: CredentialAt::XTokenHeader,
                sub: claims.sub,
                ver: claims.ver,
            });
        }
        let mut body = body.to_vec();
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if json {
            if let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&body) {
                if let Some(token) = object.remove("token") {
                    let claims = self.jwt.verify(token.as_str()?).ok()?;
                    credentials.push(Credential {
                        at: CredentialAt::BodyToken,
                        sub: claims.sub,
                        ver: claims.ver,
                    });
                    body = serde_json::to_vec(&object).ok()?;
                }
            }
        }
        let kept = KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                let value = headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect();
        Some(Answer {
            status: status.as_u16() as i16,
            headers: Json(kept),
            body,
            credentials: Json(credentials),
        })
    }
}

/// Whether an answer is final for its request, and so kept for its key.
/// The others say "not now": a retry must run again.
fn kept(status: StatusCode) -> bool {
    let not_now = matches!(
        status,
        StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::REQUEST_TIMEOUT
            | StatusCode::CONFLICT
            | StatusCode::TOO_MANY_REQUESTS
    );
    status.as_u16() < 500 && !not_now
}

/// A request's `Idempotency-Key` that could not be used, for its handler to
/// answer once its credentials are checked.
#[derive(Debug, Clone)]
pub struct MalformedKey(pub ApiError);

/// The `Idempotency-Key` of a request, checked.
fn key_of(req: &ServiceRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_KEY
                && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        })
        .map(|k| Some(k.to_owned()))
        .ok_or_else(|| {
            ApiError::new(
                Code::InvalidIdempotencyKey,
                "Idempotency-Key must be 1 to 255 visible characters",
            )
        })
}

async fn read_body(req: &mut ServiceRequest) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    };
    let payload = req
        .extract::<web::Payload>()
        .await
        .map_err(|e| ApiError::new(Code::MalformedBody, e.to_string()))?;
    match payload.to_bytes_limited(MAX_BODY).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(error)) => Err(ApiError::new(Code::MalformedBody, error.to_string())),
        Err(_) => Err(too_large()),
    }
}

/// A claimed key that is given back if its request ends unanswered (its
/// client went away, or the server stops), so a retry need not wait out the
/// lease. Giving it back is always safe: a retry sends the same commands.
struct Attempt {
    db: PgPool,
    key: IdempotencyKey,
    id: Uuid,
    settled: bool,
}

impl Attempt {
    /// The answer is stored: the key stays claimed by it.
    fn settle(mut self) {
        self.settled = true;
    }

    async fn release(mut self) {
        self.settled = true;
        Idempotency::release(&self.db, &self.key, self.id).await;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (db, key, id) = (self.db.clone(), self.key.clone(), self.id);
            runtime.spawn(async move { Idempotency::release(&db, &key, id).await });
        }
    }
}

fn answer(req: ServiceRequest, response: HttpResponse) -> ServiceResponse<BoxBody> {
    let (http, _) = req.into_parts();
    ServiceResponse::new(http, response)
}

/// The `Idempotency-Key` of every write (see the module's documentation).
pub async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let writes = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    // A method the path does not have is answered 405 by the router, never
    // held as a write.
    let routed = match (
        req.match_pattern(),
        req.app_data::<web::Data<crate::docs::Spec>>(),
    ) {
        (Some(pattern), Some(spec)) => spec
            .methods(&pattern)
            .iter()
            .any(|m| m.eq_ignore_ascii_case(req.method().as_str())),
        _ => false,
    };
    let writes = writes && routed;
    let upload = req
        .match_pattern()
        .is_some_and(|p| UNFINGERPRINTED.contains(&p.as_str()));
    let store = req.app_data::<web::Data<Idempotency>>().cloned();
    let (key, store) = match (writes, store, key_of(&req)) {
        // Without credentials the handler's own checks answer first (401 on
        // a route that needs them); the malformed key is its next answer.
        (true, _, Err(error)) if bearer(req.request()).is_none() => {
            req.extensions_mut().insert(MalformedKey(error));
            return Ok(next.call(req).await?.map_into_boxed_body());
        }
        (true, _, Err(error)) => return Ok(answer(req, error_response(error))),
        // An upload's body is not buffered here: its handler binds the key
        // to the file it reads.
        (true, Some(store), Ok(Some(key))) if upload => {
            return upload_with_key(req, next, store, key).await
        }
        (true, Some(store), Ok(Some(key))) => (key, store),
        _ => return Ok(next.call(req).await?.map_into_boxed_body()),
    };
    let body = match read_body(&mut req).await {
        Ok(body) => body,
        Err(error) => return Ok(answer(req, error_response(error))),
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned());
    let key = IdempotencyKey {
        key,
        scope: store.scope(&req),
        fingerprint: store.fingerprint(req.method(), &path, &body),
    };
    req.set_payload(body.into());
    let attempt = match store.claim(&key).await {
        Ok(Claim::Mine(attempt)) => attempt,
        Ok(Claim::Replay(stored)) => {
            metrics::counter!("tidings_idempotent_replays_total").increment(1);
            let response = store
                .replay(bearer(req.request()), stored)
                .await
                .unwrap_or_else(error_response);
            return Ok(answer(req, response));
        }
        Ok(Claim::InFlight) => {
            return Ok(answer(
                req,
                error_response(ApiError::idempotency_key_in_flight()),
            ))
        }
        Ok(Claim::Reused) => {
            return Ok(answer(
                req,
                error_response(ApiError::idempotency_key_reused()),
            ))
        }
        Err(error) => return Ok(answer(req, error_response(error))),
    };
    let attempt = Attempt {
        db: store.db.clone(),
        key: key.clone(),
        id: attempt,
        settled: false,
    };
    req.extensions_mut().insert(key.clone());

    let claim = (key.clone(), attempt.id);
    let response = renewing(&store, next.call(req), || Some(claim.clone())).await;
    finish(&store, attempt, response).await
}

/// Runs `call` (the handler) while the claim `claimed` names, once there is
/// one, has its lease renewed beside it.
async fn renewing<F: std::future::Future>(
    store: &Idempotency,
    call: F,
    claimed: impl Fn() -> Option<(IdempotencyKey, Uuid)>,
) -> F::Output {
    let mut call = std::pin::pin!(call);
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
    loop {
        tokio::select! {
            output = &mut call => return output,
            _ = renew.tick() => {
                if let Some((key, attempt)) = claimed() {
                    store.renew(&key, attempt).await;
                }
            }
        }
    }
}

/// An upload with a key: the handler binds it ([`DeferredKey`]); once it
/// has, the claim is renewed while the handler runs and completed with its
/// answer, as for any write.
async fn upload_with_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    store: web::Data<Idempotency>,
    key: String,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let deferred = DeferredKey(std::sync::Arc::new(Deferred {
        key,
        scope: store.scope(&req),
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned()),
        store: store.clone(),
        claimed: std::sync::Mutex::new(None),
    }));
    req.extensions_mut().insert(deferred.clone());
    let response = renewing(&store, next.call(req), || deferred.claimed()).await;
    match deferred.claimed() {
        Some((key, id)) => {
            let attempt = Attempt {
                db: store.db.clone(),
                key,
                id,
                settled: false,
            };
            finish(&store, attempt, response).await
        }
        None => Ok(response?.map_into_boxed_body()),
    }
}

/// Keeps a claimed request's final answer for its key, or gives the key
/// back when the answer says "not now" (or cannot be kept).
async fn finish<B: MessageBody + 'static>(
    store: &Idempotency,
    attempt: Attempt,
    response: Result<ServiceResponse<B>, actix_web::Error>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let key = attempt.key.clone();
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            attempt.release().await;
            return Err(error);
        }
    };
    let status = response.status();
    let small = match response.response().body().size() {
        BodySize::None => true,
        BodySize::Sized(size) => size <= MAX_ANSWER,
        BodySize::Stream => false,
    };
    if !kept(status) || !small {
        attempt.release().await;
        return Ok(response.map_into_boxed_body());
    }
    let (http, response) = response.into_parts();
    let (head, body) = response.into_parts();
    let body = match actix_web::body::to_bytes(body).await {
        Ok(body) => body,
        Err(error) => {
            attempt.release().await;
            let error = ApiError::internal(anyhow::anyhow!("reading an answer: {}", error.into()));
            return Ok(ServiceResponse::new(http, error_response(error)));
        }
    };
    match store.storable(status, head.headers(), body.clone()) {
        Some(stored) => match store.complete(&key, attempt.id, &stored).await {
            Ok(()) => attempt.settle(),
            // The client still gets its answer; the key is given back (or,
            // failing that, its lease runs out), and a retry runs again under
            // the same command ids.
            Err(error) => {
                tracing::warn!(%error, "storing an idempotent answer");
                attempt.release().await;
            }
        },
        None => {
            tracing::warn!(%status, "an answer with a credential that cannot be re-issued is not kept");
            attempt.release().await;
        }
    }
    Ok(ServiceResponse::new(
        http,
        head.set_body(body).map_into_boxed_body(),
    ))
}

/// Deletes expired keys every few minutes until `stop`, in small batches.
/// Expired keys are already ignored; this only keeps the table small.
pub async fn prune(db: PgPool, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    loop {
        loop {
            let pruned = sqlx::query(
                "DELETE FROM idempotency_keys WHERE ctid IN (
                     SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1)",
            )
            .bind(PRUNE_BATCH)
            .execute(&db)
            .await;
            match pruned {
                Ok(done) if done.rows_affected() as i64 == PRUNE_BATCH => continue,
                Ok(_) => break,
                // A database that is down now may be up at the next round.
                Err(error) => {
                    tracing::warn!(%error, "pruning expired idempotency keys");
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn store() -> Idempotency {
        let db = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        Idempotency::new(db, Jwt::new("secret", Duration::from_secs(60)), "secret")
    }

    #[tokio::test]
    async fn a_fingerprint_depends_on_method_path_body_and_secret() {
        let store = store();
        let base = store.fingerprint(&Method::POST, "/a", b"{}");
        assert_eq!(base, store.fingerprint(&Method::POST, "/a", b"{}"));
        assert_ne!(base, store.fingerprint(&Method::PUT, "/a", b"{}"));
        assert_ne!(base, store.fingerprint(&Method::POST, "/b", b"{}"));
        assert_ne!(base, store.fingerprint(&Method::POST, "/a", b"{ }"));
        let other = Idempotency {
            fingerprint_key: [0; 32],
            ..store
        };
        assert_ne!(base, other.fingerprint(&Method::POST, "/a", b"{}"));
    }

    #[tokio::test]
    async fn a_stored_answer_holds_no_token_and_a_replay_issues_one() {
        let store = store();
        let user = Uuid::new_v4();
        let token = store.jwt.issue(user, 3);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(X_POSITION, HeaderValue::from_static("0:1"));
        headers.insert(header::DATE, HeaderValue::from_static("now"));
        let body = serde_json::json!({"user": {"id": user}, "token": token}).to_string();
        let stored = store
            .storable(StatusCode::CREATED, &headers, Bytes::from(body))
            .unwrap();
        let text = String::from_utf8(stored.body.clone()).unwrap();
        assert!(!text.contains(&token) && !text.contains("token"), "{text}");
        assert_eq!(stored.headers.0.len(), 2, "{:?}", stored.headers.0);

        let replayed = store.replayed(stored).unwrap();
        assert_eq!(replayed.status(), StatusCode::CREATED);
        assert_eq!(
            replayed.headers().get(&IDEMPOTENT_REPLAYED).unwrap(),
            "true"
        );
        let body = actix_web::body::to_bytes(replayed.into_body())
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let claims = store.jwt.verify(body["token"].as_str().unwrap()).unwrap();
        assert_eq!((claims.sub, claims.ver), (user, 3));
    }

    #[tokio::test]
    async fn an_answer_with_a_token_that_is_not_ours_is_not_kept() {
        let store = store();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let body = Bytes::from_static(br#"{"token": "not ours"}"#);
        assert!(store.storable(StatusCode::OK, &headers, body).is_none());
    }

    #[test]
    fn answers_that_say_not_now_are_not_kept() {
        for status in [200, 201, 202, 204, 400, 404, 413, 422] {
            assert!(kept(StatusCode::from_u16(status).unwrap()), "{status}");
        }
        for status in [401, 403, 408, 409, 429, 500, 503] {
            assert!(!kept(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }
}

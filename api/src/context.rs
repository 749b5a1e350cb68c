//! What every write takes from its request: who asks, the request id (which
//! becomes the command's correlation id), and the `Idempotency-Key` that
//! makes a retry the same command.

use std::future::{ready, Ready};

use actix_web::{FromRequest, HttpMessage, HttpRequest};
use chrono::{DateTime, Utc};
use tidings_commands::{AnyCommand, CommandEnvelope};
use tidings_schemas::AggregateRef;
use uuid::Uuid;

use crate::error::ApiError;

/// The namespace of command ids derived from idempotency keys.
const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x7d1f_6a0e_3b55_4c1e_9a4e_51d2_c0de_71d5);
/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The id of one HTTP request, set by the request-id middleware.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Uuid);

#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: Uuid,
    pub idempotency_key: Option<String>,
    pub issued_at: DateTime<Utc>,
    method: String,
    path: String,
}

impl FromRequest for RequestContext {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        ready(RequestContext::of(req))
    }
}

impl RequestContext {
    fn of(req: &HttpRequest) -> Result<Self, ApiError> {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map_or_else(Uuid::new_v4, |id| id.0);
        let idempotency_key = match req.headers().get("idempotency-key") {
            None => None,
            Some(value) => {
                let key = value
                    .to_str()
                    .ok()
                    .map(str::trim)
                    .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_idempotency_key",
                            "Idempotency-Key must be 1 to 255 visible characters",
                        )
                    })?;
                Some(key.to_owned())
            }
        };
        Ok(RequestContext {
            request_id,
            idempotency_key,
            issued_at: Utc::now(),
            method: req.method().to_string(),
            path: req.path().to_owned(),
        })
    }

    /// The id of this request's command: derived from the actor, the route
    /// and the `Idempotency-Key` when there is one (so a retry is the same
    /// command), fresh otherwise.
    pub fn command_id(&self, actor: Option<Uuid>) -> Uuid {
        match &self.idempotency_key {
            Some(key) => {
                let actor = actor.map(|a| a.to_string()).unwrap_or_default();
                let name = format!("{actor}\n{} {}\n{key}", self.method, self.path);
                Uuid::new_v5(&COMMAND_NAMESPACE, name.as_bytes())
            }
            None => Uuid::new_v4(),
        }
    }

    pub fn envelope(
        &self,
        command_id: Uuid,
        actor: Option<Uuid>,
        aggregate: AggregateRef,
        command: AnyCommand,
    ) -> CommandEnvelope {
        CommandEnvelope {
            command_id,
            idempotency_key: self.idempotency_key.clone(),
            actor,
            issued_at: self.issued_at,
            correlation_id: self.request_id,
            aggregate,
            command,
        }
    }
}

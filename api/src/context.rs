//! What every write takes from its request: who asks, the request id (which
//! becomes the command's correlation id), and the `Idempotency-Key` that
//! makes a retry the same command (checked, scoped and fingerprinted by
//! [`crate::idempotency`]).

use std::future::{ready, Ready};

use actix_web::{FromRequest, HttpMessage, HttpRequest};
use chrono::{DateTime, Utc};
use tidings_commands::{AnyCommand, CommandEnvelope};
use tidings_schemas::AggregateRef;
use uuid::Uuid;

use crate::error::ApiError;
use crate::idempotency::{IdempotencyKey, MalformedKey};

/// The namespace of command ids derived from idempotency keys.
const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x7d1f_6a0e_3b55_4c1e_9a4e_51d2_c0de_71d5);

/// The id of one HTTP request, set by the request-id middleware.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Uuid);

#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: Uuid,
    pub idempotency_key: Option<String>,
    pub issued_at: DateTime<Utc>,
    /// The key as the idempotency middleware scoped and fingerprinted it.
    scoped_key: Option<IdempotencyKey>,
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
        if let Some(MalformedKey(error)) = req.extensions().get::<MalformedKey>() {
            return Err(error.clone());
        }
        let scoped_key = req.extensions().get::<IdempotencyKey>().cloned();
        Ok(RequestContext {
            request_id,
            idempotency_key: scoped_key.as_ref().map(|k| k.key.clone()),
            issued_at: Utc::now(),
            scoped_key,
        })
    }

    /// The id of this request's command: derived from the actor and the
    /// scoped, fingerprinted `Idempotency-Key` when there is one (so a retry
    /// of the same request is the same command, and another request with the
    /// same key, or one after the key expired, is not), fresh otherwise.
    pub fn command_id(&self, actor: Option<Uuid>) -> Uuid {
        match &self.scoped_key {
            Some(key) => {
                let mut name = actor
                    .map(|a| a.to_string())
                    .unwrap_or_default()
                    .into_bytes();
                name.push(b'\n');
                name.extend_from_slice(&key.identity());
                Uuid::new_v5(&COMMAND_NAMESPACE, &name)
            }
            None => Uuid::new_v4(),
        }
    }

    /// The context once an upload's handler bound its key
    /// ([`crate::idempotency::DeferredKey`]).
    pub fn with_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key.key.clone());
        self.scoped_key = Some(key);
        self
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

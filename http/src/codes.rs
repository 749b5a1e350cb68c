//! Every error code a client can see, in one place: its `code` on the wire
//! (problem+json, WebSocket error frames), its HTTP status where it is an
//! HTTP answer, and what it means. The API reference lists them from here
//! (`x-tidings-error-codes` in `/openapi.json`), so a new code is documented
//! by the line that declares it.
//!
//! Rejections decided by an aggregate (`email_taken`, `room_full`…) carry the
//! codes of their domain errors (`tidings_domain::Rejection`) and take their
//! status from the error's kind; they are documented with their routes.

use actix_web::http::StatusCode;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $status:expr, $meaning:literal; )+) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[$doc])* $variant, )+
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$( Code::$variant, )+];

            /// The `code` on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Code::$variant => $code, )+
                }
            }

            /// The HTTP status it answers with; `None` for a code only a
            /// WebSocket error frame carries.
            pub fn status(self) -> Option<StatusCode> {
                match self {
                    $( Code::$variant => $status, )+
                }
            }

            /// What it means, for the reference.
            pub fn meaning(self) -> &'static str {
                match self {
                    $( Code::$variant => $meaning, )+
                }
            }
        }
    };
}

const fn http(status: StatusCode) -> Option<StatusCode> {
    Some(status)
}

codes! {
    MalformedJson = "malformed_json", http(StatusCode::BAD_REQUEST), "the body is not JSON";
    MalformedBody = "malformed_body", http(StatusCode::BAD_REQUEST), "the body cannot be read";
    MalformedMultipart = "malformed_multipart", http(StatusCode::BAD_REQUEST), "the multipart/form-data body of an upload cannot be read";
    InvalidQuery = "invalid_query", http(StatusCode::BAD_REQUEST), "the query string does not fit the route";
    InvalidPosition = "invalid_position", http(StatusCode::BAD_REQUEST), "`X-Min-Position` is not a position token";
    InvalidIdempotencyKey = "invalid_idempotency_key", http(StatusCode::BAD_REQUEST), "`Idempotency-Key` is not 1 to 255 visible characters";
    BadHandshake = "bad_handshake", http(StatusCode::BAD_REQUEST), "`/ws` was asked without a WebSocket handshake";
    Unauthenticated = "unauthenticated", http(StatusCode::UNAUTHORIZED), "no credentials: `Authorization: Bearer <token>`";
    InvalidToken = "invalid_token", http(StatusCode::UNAUTHORIZED), "the token is not valid";
    TokenExpired = "token_expired", http(StatusCode::UNAUTHORIZED), "the token has expired";
    TokenRevoked = "token_revoked", http(StatusCode::UNAUTHORIZED), "the token was revoked by a password change";
    InvalidCredentials = "invalid_credentials", http(StatusCode::UNAUTHORIZED), "wrong login or password";
    InvalidResetToken = "invalid_reset_token", http(StatusCode::BAD_REQUEST), "the password reset token is unknown, expired, used, or ended by a newer one";
    Forbidden = "forbidden", http(StatusCode::FORBIDDEN), "the caller may not do this";
    NotFound = "not_found", http(StatusCode::NOT_FOUND), "no such resource, or one the caller may not see";
    MethodNotAllowed = "method_not_allowed", http(StatusCode::METHOD_NOT_ALLOWED), "the path exists under other methods (`Allow`)";
    IdempotencyKeyInFlight = "idempotency_key_in_flight", http(StatusCode::CONFLICT), "the first request with this key is still being answered (`Retry-After`)";
    PayloadTooLarge = "payload_too_large", http(StatusCode::PAYLOAD_TOO_LARGE), "the body is too large";
    UnsupportedMediaType = "unsupported_media_type", http(StatusCode::UNSUPPORTED_MEDIA_TYPE), "the body is not `application/json` (an upload: not multipart/form-data, or its bytes are not an accepted image or video type)";
    UploadTooSlow = "upload_too_slow", http(StatusCode::REQUEST_TIMEOUT), "the upload did not arrive within its deadline; retry";
    TooManyUploads = "too_many_uploads", http(StatusCode::TOO_MANY_REQUESTS), "the caller has as many uploads under way as allowed (`Retry-After`)";
    RateLimited = "rate_limited", http(StatusCode::TOO_MANY_REQUESTS), "more requests than the caller's limit allows (`Retry-After`, `RateLimit`, `RateLimit-Policy`)";
    RangeNotSatisfiable = "range_not_satisfiable", http(StatusCode::RANGE_NOT_SATISFIABLE), "`Range` lies past the end of the object (`Content-Range: bytes */size`)";
    ValidationFailed = "validation_failed", http(StatusCode::UNPROCESSABLE_ENTITY), "some fields are not acceptable (`errors`)";
    ImageTooLarge = "image_too_large", http(StatusCode::UNPROCESSABLE_ENTITY), "the image's dimensions, or the memory decoding it takes, pass the limits";
    UndecodableMedia = "undecodable_media", http(StatusCode::UNPROCESSABLE_ENTITY), "the file has an image's signature but cannot be decoded";
    HistoryTooLong = "history_too_long", http(StatusCode::UNPROCESSABLE_ENTITY), "the aggregate's history up to `as_of` holds more events than one fold reads (`tidings replay --aggregate` reads any length)";
    WebhookUrlRefused = "webhook_url_refused", http(StatusCode::UNPROCESSABLE_ENTITY), "the webhook URL is not https, does not resolve, or reaches a loopback, private, link-local or other internal address that is not allowlisted";
    TooManyWebhooks = "too_many_webhooks", http(StatusCode::UNPROCESSABLE_ENTITY), "the caller has as many webhooks as a user may have: delete one first";
    DeliveryInFlight = "delivery_in_flight", http(StatusCode::CONFLICT), "the webhook delivery is being sent now; retry it once it is done";
    IdempotencyKeyReused = "idempotency_key_reused", http(StatusCode::UNPROCESSABLE_ENTITY), "the key stands for another request of the same caller";
    Internal = "internal", http(StatusCode::INTERNAL_SERVER_ERROR), "something went wrong on Tidings' side (never for what a client sent)";
    Overloaded = "overloaded", http(StatusCode::SERVICE_UNAVAILABLE), "beyond capacity; nothing was done (`Retry-After`)";
    LogUnavailable = "log_unavailable", http(StatusCode::SERVICE_UNAVAILABLE), "the command log cannot be reached (`Retry-After`)";
    CommandTimeout = "command_timeout", http(StatusCode::SERVICE_UNAVAILABLE), "the command was not decided in time; retry with the same `Idempotency-Key`";
    DatabaseUnavailable = "database_unavailable", http(StatusCode::SERVICE_UNAVAILABLE), "PostgreSQL cannot be reached (`Retry-After`)";
    MediaStoreUnavailable = "media_store_unavailable", http(StatusCode::SERVICE_UNAVAILABLE), "the media store cannot be reached (`Retry-After`)";
    PositionNotReached = "position_not_reached", http(StatusCode::SERVICE_UNAVAILABLE), "the read model has not reached `X-Min-Position` within the bounded wait";
    /// A WebSocket error frame: a frame that is not one of the protocol's.
    BadFrame = "bad_frame", None, "a WebSocket frame that is not one of the protocol's";
    UnknownChannel = "unknown_channel", None, "a channel name that is not `user:`, `room:` or `post:` and an id";
    TooManySubscriptions = "too_many_subscriptions", None, "a socket holds at most 100 subscriptions, its own channel among them: unsubscribe first";
    HistoryTruncated = "history_truncated", None, "the channel's history no longer reaches back to `since`: reload from REST";
    Unavailable = "unavailable", None, "the gateway cannot read the channel's history now; subscribe again";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_snake_case_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let name = code.as_str();
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            assert!(seen.insert(name), "{name} twice");
        }
    }
}

//! `/demo`: a small page that uses Tidings as a browser client would (sign
//! up or log in, rooms, chat, presence, typing, the frames as they arrive).
//! Plain HTML and JavaScript compiled into the binary; it loads nothing from
//! anywhere but the Tidings that serves it.

use actix_web::http::header;
use actix_web::HttpResponse;

const PAGE: &str = include_str!("../demo/index.html");

/// The demo page: sign up or log in, rooms, chat, presence, typing, and the
/// frames as they arrive. It talks to the REST API and `/ws` of the same
/// origin, so it is served by processes that run both.
#[utoipa::path(get, path = "/demo", tag = "realtime",
    responses((status = 200, description = "The page (HTML, its script and style inline; nothing loaded from elsewhere)", content_type = "text/html", body = String)))]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'",
        ))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PAGE)
}

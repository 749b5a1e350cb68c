//! The API's own description: OpenAPI 3.1 generated from the handlers
//! (`GET /openapi.json`), and a reference page rendered from it
//! (`GET /docs`). The page and its stylesheet are served by Tidings itself:
//! no CDN, nothing fetched at build time.
//!
//! Convention: every route is mounted with `.route("<path>", web::<method>()…)`
//! and its handler carries `#[utoipa::path]` listed in [`ApiDoc`]; a test
//! reads the sources for `.route(` and fails on a route the spec lacks.
//!
//! Answers that come from shared machinery rather than from a handler are
//! added to every operation they apply to by [`common_answers`]: a JSON body
//! can be malformed (400), too large (413), of another media type (415) or
//! invalid (422); any write takes `Idempotency-Key` (400 when it is not one);
//! any write may be rate limited (429);
//! any GET takes `X-Min-Position` (400 when it is not a position, 503 past
//! the bounded wait); a secured operation answers 401.
//! Handlers document only what is their own. `scripts/schemathesis` holds the
//! document to what the server does.

use actix_web::{web, HttpResponse};
use serde_json::Value;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::accounts;
use crate::admin;
use crate::details;
use crate::error::{FieldError, Problem};
use crate::follows;
use crate::health;
use crate::media;
use crate::notifications;
use crate::passwords;
use crate::posts;
use crate::rooms;
use crate::webhooks;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tidings",
        description = "Event-sourced CQRS backend for real-time social and messaging apps. Writes answer with a `position`; any GET accepts `X-Min-Position` to read its own writes. Errors are `application/problem+json` with a stable `code`. WebSocket protocol and Kafka topics: `/asyncapi.json`.",
        license(name = "MIT")
    ),
    paths(
        accounts::register,
        accounts::login,
        accounts::own_profile,
        accounts::update_profile,
        accounts::public_profile,
        details::own_details,
        details::update_details,
        passwords::forgot,
        passwords::reset,
        passwords::change,
        posts::create_post,
        posts::get_post,
        posts::delete_post,
        posts::like,
        posts::unlike,
        posts::react,
        posts::unreact,
        posts::add_comment,
        posts::list_comments,
        posts::user_posts,
        posts::feed,
        media::upload,
        media::original,
        media::thumbnail,
        follows::follow,
        follows::unfollow,
        follows::followers,
        follows::following,
        notifications::list,
        notifications::mark_read,
        rooms::create_room,
        rooms::my_rooms,
        rooms::public_rooms,
        rooms::get_room,
        rooms::preview,
        rooms::update_room,
        rooms::join,
        rooms::leave,
        rooms::invite,
        rooms::transfer,
        rooms::remove_member,
        rooms::set_role,
        rooms::post_message,
        rooms::messages,
        rooms::edit_message,
        rooms::delete_message,
        rooms::mark_read,
        rooms::send_direct,
        rooms::direct_messages,
        admin::events,
        admin::aggregate,
        admin::projections,
        webhooks::register,
        webhooks::list,
        webhooks::delete,
        webhooks::deliveries,
        webhooks::retry,
        health::health,
        health::ready,
        health::metrics,
        openapi_json,
        docs_page,
        docs_stylesheet,
        asyncapi_json,
        schema_file,
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "Register, sign in, profiles"),
        (name = "social", description = "Posts, media, reactions, comments, follows, the home feed"),
        (name = "rooms", description = "Rooms, their participants and messages, direct conversations"),
        (name = "notifications", description = "Likes, comments, follows and mentions of the caller"),
        (name = "admin", description = "For the site's admins (TIDINGS_ADMIN_USERNAMES): the event log, aggregates as of an instant, projector lag"),
        (name = "webhooks", description = "Endpoints that receive events as signed POSTs, their delivery logs"),
        (name = "operations", description = "Health, readiness, metrics, documentation"),
        (name = "realtime", description = "The WebSocket gateway"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // The same JWT in `?token=`, for WebSocket clients that cannot set
        // headers (browsers).
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("token"))),
        );
    }
}

/// The finished documents, serialized once, shared by the handlers.
pub struct Spec {
    pub json: String,
    value: Value,
    pub asyncapi: String,
}

impl Spec {
    /// The finished documents of everything this process serves; the shared
    /// answers ([`common_answers`]) are added here, after the crates' parts
    /// are merged.
    pub fn new(mut openapi: utoipa::openapi::OpenApi, asyncapi: &Value) -> Self {
        common_answers(&mut openapi);
        let mut value: Value =
            serde_json::from_str(&openapi.to_pretty_json().expect("the spec serializes"))
                .expect("the spec is JSON");
        // Every code a client can see, from the one list of them.
        value["x-tidings-error-codes"] = tidings_http::codes::Code::ALL
            .iter()
            .map(|code| {
                serde_json::json!({
                    "code": code.as_str(),
                    "status": code.status().map(|s| s.as_u16()),
                    "meaning": code.meaning(),
                })
            })
            .collect();
        let json = serde_json::to_string_pretty(&value).expect("the spec serializes");
        let asyncapi = serde_json::to_string_pretty(asyncapi).expect("the document serializes");
        Spec {
            json,
            value,
            asyncapi,
        }
    }
}

impl Spec {
    /// Whether the operation of an actix route pattern and method requires
    /// credentials (it names a security requirement, none of them empty).
    pub fn secured(&self, pattern: &str, method: &str) -> bool {
        let operation = &self.value["paths"][openapi_path(pattern)][method.to_lowercase()];
        operation["security"]
            .as_array()
            .is_some_and(|requirements| {
                !requirements.is_empty()
                    && requirements
                        .iter()
                        .all(|r| r.as_object().is_some_and(|o| !o.is_empty()))
            })
    }

    /// The methods (upper case) the document gives the path of an actix
    /// route pattern; none for a path it does not know.
    pub fn methods(&self, pattern: &str) -> Vec<String> {
        let path = openapi_path(pattern);
        let Some(item) = self.value["paths"][&path].as_object() else {
            return Vec::new();
        };
        const METHODS: [&str; 8] = [
            "get", "head", "post", "put", "patch", "delete", "options", "trace",
        ];
        METHODS
            .iter()
            .filter(|m| item.contains_key(**m))
            .map(|m| m.to_uppercase())
            .collect()
    }
}

/// An actix route pattern as an OpenAPI path: `{name:regex}` is `{name}`.
pub fn openapi_path(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|part| match part.split_once(':') {
            Some((name, _)) if part.starts_with('{') => format!("{name}}}"),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Adds to every operation the answers of the machinery it goes through (see
/// the module's documentation); what an operation documents itself stays.
pub fn common_answers(openapi: &mut utoipa::openapi::OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.put, true),
            (&mut item.patch, true),
            (&mut item.delete, true),
        ];
        for (operation, is_write) in operations {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            if is_write {
                header(
                    operation,
                    "Idempotency-Key",
                    "A retry with the same key is the same request: it gets the first answer and appends nothing",
                    // What `idempotency::key_of` takes: visible ASCII and
                    // spaces, 1 to 255 characters once trimmed; tabs only
                    // around it (a tab inside is a control character).
                    r"^[\t ]*[!-~]([ -~]{0,253}[!-~])?[\t ]*$",
                );
                answer(operation, "400", "`invalid_idempotency_key`, or the body cannot be read (`malformed_json`, `malformed_body`)");
                answer(operation, "429", "`rate_limited`: past the limit of the caller, the address or the account named (`Retry-After`, `RateLimit`, `RateLimit-Policy`)");
                if operation.request_body.is_none() {
                    answer(
                        operation,
                        "422",
                        "`idempotency_key_reused`: the key was used for another request",
                    );
                }
            } else {
                header(
                    operation,
                    "X-Min-Position",
                    "Answer only once the read model has passed this position (a `position` or `X-Position` of a write; opaque, base64url)",
                    r"^[A-Za-z0-9_-]*$",
                );
                answer(
                    operation,
                    "400",
                    "`invalid_position`: `X-Min-Position` is not a position",
                );
                answer(
                    operation,
                    "503",
                    "`position_not_reached` or a dependency is down; `Retry-After`",
                );
            }
            if operation.request_body.is_some() {
                answer(operation, "413", "`payload_too_large`");
                answer(
                    operation,
                    "415",
                    "`unsupported_media_type`: send `application/json`",
                );
                answer(operation, "422", "`validation_failed`, with `errors`");
            }
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                answer(operation, "401", "no valid token (`unauthenticated`, `invalid_token`, `token_expired`, `token_revoked`)");
            }
        }
    }
}

/// Documents a problem+json answer, unless the operation has its own.
fn answer(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
                .into()
        });
}

/// Documents an optional header of the given pattern; an operation that
/// names the header already keeps its description and gets the pattern.
fn header(operation: &mut Operation, name: &str, description: &str, pattern: &str) {
    let schema = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(pattern))
        .build();
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    if let Some(existing) = parameters
        .iter_mut()
        .find(|p| p.name.eq_ignore_ascii_case(name))
    {
        existing.schema = Some(schema.into());
        return;
    }
    parameters.push(
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(description))
            .schema(Some(schema))
            .build(),
    );
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json))
        .route("/docs", web::get().to(docs_page))
        .route("/docs/style.css", web::get().to(docs_stylesheet))
        .route("/asyncapi.json", web::get().to(asyncapi_json))
        .route("/schemas/{path:.*}", web::get().to(schema_file));
}

/// The AsyncAPI 3 document of the WebSocket protocol and the Kafka topics.
#[utoipa::path(get, path = "/asyncapi.json", tag = "operations", responses((status = 200, description = "AsyncAPI 3 document", content_type = "application/json")))]
pub(crate) async fn asyncapi_json(spec: web::Data<Spec>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(spec.asyncapi.clone())
}

/// A JSON Schema of the log or the WebSocket protocol.
#[utoipa::path(get, path = "/schemas/{path}", tag = "operations",
    params(("path" = String, Path, description = "e.g. `events/account.registered.v1.json`")),
    responses((status = 200, description = "JSON Schema", content_type = "application/schema+json"),
        (status = 404, description = "no such schema", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn schema_file(path: web::Path<String>) -> HttpResponse {
    match tidings_schemas::json::file(&path) {
        Some(schema) => HttpResponse::Ok()
            .content_type("application/schema+json")
            .body(schema),
        None => crate::error_response(crate::error::ApiError::not_found()),
    }
}

/// The OpenAPI 3.1 description of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub(crate) async fn openapi_json(spec: web::Data<Spec>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(spec.json.clone())
}

/// The API reference page.
#[utoipa::path(get, path = "/docs", tag = "operations", responses((status = 200, description = "HTML reference", content_type = "text/html")))]
pub(crate) async fn docs_page(spec: web::Data<Spec>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(render(&spec.value))
}

/// The reference page's stylesheet.
#[utoipa::path(get, path = "/docs/style.css", tag = "operations", responses((status = 200, description = "CSS", content_type = "text/css")))]
pub(crate) async fn docs_stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("Cache-Control", "public, max-age=3600"))
        .body(STYLESHEET)
}

const STYLESHEET: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d2433}\
h1{margin-bottom:.2rem}h2{margin-top:2.5rem;border-bottom:1px solid #d8dce3}\
.op{border:1px solid #d8dce3;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}\
.method{display:inline-block;min-width:4.5rem;font-weight:700;text-transform:uppercase}\
.get{color:#0a7d45}.post{color:#1f5fbf}.patch{color:#a05a00}.put{color:#7a3fbf}.delete{color:#b3261e}\
code,.path{font-family:ui-monospace,monospace}table{border-collapse:collapse}td,th{padding:.2rem .6rem;text-align:left;vertical-align:top}\
.lock{color:#a05a00;font-size:.85em}";

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// The name of a `$ref`ed schema, or the schema's type.
fn schema_name(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return reference.rsplit('/').next().unwrap_or(reference).to_owned();
    }
    match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(types)) => types.iter().map(text).collect::<Vec<_>>().join(" | "),
        _ => String::new(),
    }
}

/// Renders the reference page from the spec.
fn render(spec: &Value) -> String {
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} API</title>\
         <link rel=\"stylesheet\" href=\"/docs/style.css\"></head><body><h1>{} API</h1><p>{}</p>\
         <p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> · <a href=\"/asyncapi.json\">/asyncapi.json</a></p>",
        esc(text(&spec["info"]["title"])),
        esc(text(&spec["info"]["title"])),
        esc(text(&spec["info"]["description"])),
    );
    let empty = serde_json::Map::new();
    let tags: Vec<&Value> = spec["tags"]
        .as_array()
        .map(|t| t.iter().collect())
        .unwrap_or_default();
    let paths = spec["paths"].as_object().unwrap_or(&empty);
    for tag in tags {
        let name = text(&tag["name"]);
        html += &format!(
            "<h2 id=\"{0}\">{0}</h2><p>{1}</p>",
            esc(name),
            esc(text(&tag["description"]))
        );
        for (path, item) in paths {
            for method in ["get", "post", "put", "patch", "delete"] {
                let Some(op) = item.get(method) else { continue };
                let in_tag = op["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| text(x) == name));
                if in_tag {
                    html += &operation(method, path, op);
                }
            }
        }
    }
    html += "<h2 id=\"errors\">error codes</h2><p>The <code>code</code> of a problem+json answer or a WebSocket error frame. Rejections by an aggregate (<code>email_taken</code>…) are listed with their routes.</p><table>";
    for code in spec["x-tidings-error-codes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        html += &format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(text(&code["code"])),
            code["status"]
                .as_u64()
                .map_or_else(|| "WebSocket".to_owned(), |s| s.to_string()),
            esc(text(&code["meaning"])),
        );
    }
    html += "</table>";
    let schemas = spec["components"]["schemas"].as_object().unwrap_or(&empty);
    html += "<h2 id=\"schemas\">schemas</h2>";
    for (name, schema) in schemas {
        html += &format!(
            "<div class=\"op\" id=\"schema-{0}\"><strong>{0}</strong><table>",
            esc(name)
        );
        let properties = schema["properties"].as_object().unwrap_or(&empty);
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().map(text).collect())
            .unwrap_or_default();
        for (field, definition) in properties {
            let mark = if required.contains(&field.as_str()) {
                ""
            } else {
                "?"
            };
            html += &format!(
                "<tr><td><code>{}{mark}</code></td><td>{}</td><td>{}</td></tr>",
                esc(field),
                esc(&schema_name(definition)),
                esc(text(&definition["description"]))
            );
        }
        html += "</table></div>";
    }
    html + "</body></html>"
}

fn operation(method: &str, path: &str, op: &Value) -> String {
    let secured = op
        .get("security")
        .is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()));
    let mut html = format!(
        "<div class=\"op\"><span class=\"method {method}\">{method}</span> <span class=\"path\">{}</span>{}<p>{}</p>",
        esc(path),
        if secured { " <span class=\"lock\">bearer token</span>" } else { "" },
        esc(op["description"].as_str().or(op["summary"].as_str()).unwrap_or_default()),
    );
    if let Some(parameters) = op["parameters"].as_array() {
        html += "<table>";
        for p in parameters {
            html += &format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(text(&p["name"])),
                esc(text(&p["in"])),
                esc(text(&p["description"]))
            );
        }
        html += "</table>";
    }
    if let Some(content) = op["requestBody"]["content"].as_object() {
        for (kind, body) in content {
            html += &format!(
                "<p>body <code>{}</code>: {}</p>",
                esc(kind),
                esc(&schema_name(&body["schema"]))
            );
        }
    }
    html += "<table>";
    if let Some(responses) = op["responses"].as_object() {
        for (status, response) in responses {
            let body = response["content"]
                .as_object()
                .and_then(|c| c.values().next())
                .map(|c| schema_name(&c["schema"]))
                .unwrap_or_default();
            html += &format!(
                "<tr><td><strong>{}</strong></td><td>{}</td><td>{}</td></tr>",
                esc(status),
                esc(text(&response["description"])),
                esc(&body)
            );
        }
    }
    html + "</table></div>"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_lists_every_error_code_with_its_status() {
        let spec = Spec::new(
            <ApiDoc as utoipa::OpenApi>::openapi(),
            &serde_json::json!({}),
        );
        let listed = spec.value["x-tidings-error-codes"].as_array().unwrap();
        assert_eq!(listed.len(), tidings_http::codes::Code::ALL.len());
        let page = render(&spec.value);
        for code in tidings_http::codes::Code::ALL {
            assert!(
                page.contains(&format!("<code>{}</code>", code.as_str())),
                "{code:?}"
            );
        }
        let not_found = listed.iter().find(|c| c["code"] == "not_found").unwrap();
        assert_eq!(not_found["status"], 404);
    }
}

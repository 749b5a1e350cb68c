//! Media: uploading images and short videos (`POST /api/media`) and serving
//! them (`GET /media/{id}`, `GET /media/{id}/thumbnail`).
//!
//! An upload is read as a stream and never held past its limit: the type is
//! sniffed from the first bytes (never taken from the part's Content-Type or
//! file name), and the limit of that type applies from then on. An image is
//! decoded once, off the async workers and under a bounded number of slots,
//! with limits on its dimensions and allocations (a small file that claims
//! to be a huge image is refused before it is decoded); its dimensions are
//! measured and a PNG thumbnail made. The objects go to the media store, and
//! only then is `media.upload` sent: the log never names bytes that are not
//! stored. Items no post takes are removed by the media sweeper
//! (`src/media_sweeper.rs`).
//!
//! Serving reads the `media` read model and streams from the store, with a
//! strong `ETag` (the SHA-256 of the bytes), `If-None-Match`, and single
//! byte ranges.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use actix_multipart::{Multipart, MultipartError};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tidings_commands::AnyCommand;
use tidings_domain::media;
pub(crate) use tidings_domain::media::Holder;
use tidings_projections::media::{self as read, MediaView};
use tidings_schemas::{AggregateRef, AggregateType, Position};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::context::RequestContext;
use crate::error::{accepted, ApiError, Code, FieldError, Problem};
use crate::idempotency::{Bound, DeferredKey};
use crate::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/media", web::post().to(upload))
        .route("/media/{id}", web::get().to(original))
        .route("/media/{id}/thumbnail", web::get().to(thumbnail));
}

/// The longest side of a thumbnail, in pixels.
const THUMBNAIL_SIDE: u32 = 320;
/// Bytes read before the type is sniffed: enough for every signature
/// accepted (WebP's `RIFF????WEBP`, MP4's `????ftyp` and its brand).
const SNIFF_BYTES: usize = 12;
/// The longest an upload may send nothing: a stalled client does not hold
/// an upload slot for long.
const STALL: Duration = Duration::from_secs(15);
/// How long an upload waits for a decoding slot before 503 `overloaded`.
const DECODE_WAIT: Duration = Duration::from_secs(1);
/// The memory uploads being read may hold at once, in videos of the
/// largest size per decoding slot. It is counted in bytes received, not in
/// uploads: a client that stalls holds only what it sent, never a slot
/// others wait for.
const UPLOADS_PER_SLOT: usize = 2;
/// Uploads one user may have under way at once; past it 429.
const UPLOADS_PER_USER: usize = 2;
/// The longest an upload may take to arrive, whatever its pace: a client
/// that trickles bytes holds its memory this long at most.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(120);
/// Memory is counted in blocks of this many bytes.
const BLOCK: usize = 64 * 1024;
/// Served bytes never change under an id: caches may keep them.
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The limits of uploads.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub image_max_bytes: u64,
    pub video_max_bytes: u64,
    /// The widest and tallest image decoded.
    pub max_dimension: u32,
    /// The most memory one image's decoding may allocate.
    pub max_decode_bytes: u64,
    /// Images decoded at once (one core each).
    pub decode_slots: usize,
}

/// The media store and the bounds of uploads, shared by the handlers.
pub struct MediaService {
    pub store: Arc<dyn ObjectStore>,
    pub settings: MediaSettings,
    decoding: Arc<Semaphore>,
    /// The memory uploads may hold, in [`BLOCK`]s.
    memory: Arc<Semaphore>,
    /// Uploads under way per user.
    under_way: std::sync::Mutex<std::collections::HashMap<Uuid, usize>>,
}

/// One of a user's uploads under way, counted until dropped.
struct UnderWay<'a> {
    counts: &'a std::sync::Mutex<std::collections::HashMap<Uuid, usize>>,
    user: Uuid,
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock() {
            if let Some(n) = counts.get_mut(&self.user) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&self.user);
                }
            }
        }
    }
}

impl MediaService {
    pub fn new(store: Arc<dyn ObjectStore>, settings: MediaSettings) -> Self {
        let slots = settings.decode_slots.max(1);
        MediaService {
            store,
            decoding: Arc::new(Semaphore::new(slots)),
            memory: Arc::new(Semaphore::new(
                slots * UPLOADS_PER_SLOT * (settings.video_max_bytes as usize).div_ceil(BLOCK),
            )),
            under_way: std::sync::Mutex::new(std::collections::HashMap::new()),
            settings,
        }
    }

    /// Counts an upload of `user` under way, unless it has as many as
    /// allowed.
    fn start_upload(&self, user: Uuid) -> Result<UnderWay<'_>, ApiError> {
        let mut counts = self
            .under_way
            .lock()
            .map_err(|_| ApiError::internal(anyhow::anyhow!("the uploads count was poisoned")))?;
        let n = counts.entry(user).or_default();
        if *n >= UPLOADS_PER_USER {
            return Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    Code::TooManyUploads,
                    format!("at most {UPLOADS_PER_USER} uploads at once"),
                )
            });
        }
        *n += 1;
        Ok(UnderWay {
            counts: &self.under_way,
            user,
        })
    }
}

/// The media store a URL names: `s3://bucket[/prefix]` (credentials,
/// region and endpoint from the `AWS_*` variables, so any S3-compatible
/// store), or a local directory (created if missing) when there is none.
pub fn store(url: Option<&str>, dir: &std::path::Path) -> anyhow::Result<Arc<dyn ObjectStore>> {
    use anyhow::Context as _;
    match url.filter(|u| !u.is_empty()) {
        Some(url) if url.starts_with("s3://") => {
            let parsed = url::Url::parse(url)
                .with_context(|| format!("TIDINGS_MEDIA_STORE: {url} is not a URL"))?;
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .with_context(|| format!("TIDINGS_MEDIA_STORE: {url} names no bucket"))?;
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .with_context(|| format!("configuring the media store {url}"))?;
            // The path after the bucket is where Tidings' objects go in it.
            let prefix = parsed.path().trim_matches('/');
            Ok(if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            })
        }
        Some(url) => anyhow::bail!("TIDINGS_MEDIA_STORE: {url} is not an s3:// URL"),
        None => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the media directory {}", dir.display()))?;
            // Removing an item's objects removes its emptied directory too.
            let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .with_context(|| format!("opening the media directory {}", dir.display()))?
                .with_automatic_cleanup(true);
            Ok(Arc::new(local))
        }
    }
}

/// The keys of an item's objects in the store.
pub fn object_key(id: Uuid) -> String {
    format!("media/{id}/original")
}

pub fn thumbnail_key(id: Uuid) -> String {
    format!("media/{id}/thumbnail")
}

/// The types accepted, as sniffed from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Png,
    Jpeg,
    Gif,
    Webp,
    Mp4,
}

impl Kind {
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Png => "image/png",
            Kind::Jpeg => "image/jpeg",
            Kind::Gif => "image/gif",
            Kind::Webp => "image/webp",
            Kind::Mp4 => "video/mp4",
        }
    }

    fn image_format(self) -> Option<image::ImageFormat> {
        match self {
            Kind::Png => Some(image::ImageFormat::Png),
            Kind::Jpeg => Some(image::ImageFormat::Jpeg),
            Kind::Gif => Some(image::ImageFormat::Gif),
            Kind::Webp => Some(image::ImageFormat::WebP),
            Kind::Mp4 => None,
        }
    }
}

/// MP4 major brands (ISO base media files that are MP4 video); HEIF
/// images and QuickTime files share the `ftyp` box and are not accepted.
const MP4_BRANDS: &[&[u8; 4]] = &[
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"dash",
    b"M4V ", b"mp71",
];

/// The type of a file from its first bytes, if it is one accepted.
pub fn sniff(head: &[u8]) -> Option<Kind> {
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        let brand: &[u8; 4] = head[8..12].try_into().ok()?;
        return MP4_BRANDS.contains(&brand).then_some(Kind::Mp4);
    }
    match image::guess_format(head).ok()? {
        image::ImageFormat::Png => Some(Kind::Png),
        image::ImageFormat::Jpeg => Some(Kind::Jpeg),
        image::ImageFormat::Gif => Some(Kind::Gif),
        // `RIFF` alone is any RIFF file: WebP says so at bytes 8..12.
        image::ImageFormat::WebP if head.len() >= 12 && &head[8..12] == b"WEBP" => Some(Kind::Webp),
        _ => None,
    }
}

fn too_large(limit: u64, what: &str) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("{what} may be at most {limit} bytes"),
    )
}

fn unsupported() -> ApiError {
    ApiError::new(
        Code::UnsupportedMediaType,
        "the file is not a PNG, JPEG, GIF or WebP image or an MP4 video",
    )
}

fn malformed(error: MultipartError) -> ApiError {
    match error {
        MultipartError::ContentTypeMissing
        | MultipartError::ContentTypeParse
        | MultipartError::ContentTypeIncompatible => ApiError::new(
            Code::UnsupportedMediaType,
            "send the file as multipart/form-data, in a part named `file`",
        ),
        other => ApiError::new(Code::MalformedMultipart, other.to_string()),
    }
}

/// The next part of the form, if any.
async fn next_part(form: &mut Multipart) -> Result<Option<actix_multipart::Field>, ApiError> {
    tokio::time::timeout(STALL, form.try_next())
        .await
        .map_err(|_| ApiError::new(Code::MalformedMultipart, "the upload stalled"))?
        .map_err(malformed)
}

/// Reads the one file of the form, sniffing its type from its first bytes
/// and stopping as soon as it passes its type's limit.
async fn read_file(
    form: &mut Multipart,
    settings: &MediaSettings,
    memory: &Arc<Semaphore>,
) -> Result<(Kind, Bytes, Option<OwnedSemaphorePermit>), ApiError> {
    let stalled = || ApiError::new(Code::MalformedMultipart, "the upload stalled");
    let mut field = match next_part(form).await? {
        Some(field) if field.name() == Some("file") => field,
        _ => {
            return Err(ApiError::validation(vec![FieldError::new(
                "file",
                "one part named `file`, first in the form",
            )]))
        }
    };
    let largest = settings.image_max_bytes.max(settings.video_max_bytes);
    let mut limit = largest;
    let mut kind = None;
    let mut bytes = BytesMut::new();
    // The memory the bytes received take, counted before they are kept.
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(chunk) = tokio::time::timeout(STALL, field.next())
        .await
        .map_err(|_| stalled())?
    {
        let chunk = chunk.map_err(malformed)?;
        let blocks = (bytes.len() + chunk.len()).div_ceil(BLOCK);
        let more = blocks - held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        if more > 0 {
            let permit = u32::try_from(more)
                .ok()
                .and_then(|n| memory.clone().try_acquire_many_owned(n).ok())
                .ok_or_else(|| {
                    ApiError::overloaded("uploads hold all the memory allowed; retry")
                })?;
            match &mut held {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            }
        }
        bytes.extend_from_slice(&chunk);
        if kind.is_none() && bytes.len() >= SNIFF_BYTES {
            let sniffed = sniff(&bytes).ok_or_else(unsupported)?;
            limit = limit_of(sniffed, settings);
            kind = Some(sniffed);
        }
        if bytes.len() as u64 > limit {
            return Err(too_large(limit, "this file"));
        }
    }
    if bytes.is_empty() {
        return Err(ApiError::validation(vec![FieldError::new(
            "file",
            "the file is empty",
        )]));
    }
    // The form has one part: another after the file is refused, not ignored.
    // (The form yields no next part while this one is held.)
    drop(field);
    if next_part(form).await?.is_some() {
        return Err(ApiError::validation(vec![FieldError::new(
            "body",
            "one part, `file`, and no other",
        )]));
    }
    let kind = match kind {
        Some(kind) => kind,
        None => sniff(&bytes).ok_or_else(unsupported)?,
    };
    Ok((kind, bytes.freeze(), held))
}

fn limit_of(kind: Kind, settings: &MediaSettings) -> u64 {
    match kind {
        Kind::Mp4 => settings.video_max_bytes,
        _ => settings.image_max_bytes,
    }
}

/// What decoding an image tells.
struct Decoded {
    width: u32,
    height: u32,
    thumbnail: Vec<u8>,
}

/// Decodes an image within the limits, and makes its thumbnail (PNG, the
/// longest side at most [`THUMBNAIL_SIDE`]). CPU heavy: run it off the
/// async workers.
fn decode(
    bytes: &[u8],
    format: image::ImageFormat,
    settings: &MediaSettings,
) -> Result<Decoded, ApiError> {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(settings.max_dimension);
    limits.max_image_height = Some(settings.max_dimension);
    limits.max_alloc = Some(settings.max_decode_bytes);
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let image = reader.decode().map_err(|error| match error {
        image::ImageError::Limits(_) => ApiError::new(
            Code::ImageTooLarge,
            format!(
                "the image is larger than {0}×{0} pixels or takes too much memory to decode",
                settings.max_dimension
            ),
        ),
        other => ApiError::new(
            Code::UndecodableMedia,
            format!("the image cannot be decoded: {other}"),
        ),
    })?;
    let (width, height) = (image.width(), image.height());
    // RGBA8 is what PNG encodes whatever the source's pixel type.
    // Never larger than the image: a small one is its own thumbnail.
    let small = if width.max(height) <= THUMBNAIL_SIDE {
        image::DynamicImage::ImageRgba8(image.to_rgba8())
    } else {
        image::DynamicImage::ImageRgba8(image.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE).to_rgba8())
    };
    let mut thumbnail = Vec::new();
    small
        .write_to(&mut Cursor::new(&mut thumbnail), image::ImageFormat::Png)
        .map_err(ApiError::internal)?;
    Ok(Decoded {
        width,
        height,
        thumbnail,
    })
}

fn store_error(error: object_store::Error) -> ApiError {
    match error {
        object_store::Error::NotFound { .. } => ApiError::not_found(),
        other => {
            tracing::warn!(error = %other, "media store");
            ApiError::unavailable(
                Code::MediaStoreUnavailable,
                "the media store is unavailable; retry",
                2,
            )
        }
    }
}

/// The form of `POST /api/media`: one part, `file`, and no other.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file: a PNG, JPEG, GIF or WebP image, or an MP4 video. Its type
    /// is read from its bytes; the part's Content-Type and file name are
    /// ignored.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// An uploaded item and the position of its write.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Uploaded {
    #[serde(flatten)]
    media: MediaView,
    #[schema(value_type = String)]
    position: Position,
}

#[utoipa::path(post, path = "/api/media", tag = "social",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored; `url` serves it (and `thumbnail_url` its thumbnail, images only)", body = Uploaded, headers(("X-Position" = String))),
        (status = 400, description = "`malformed_multipart`: the form cannot be read", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "`upload_too_slow`: the file did not arrive within the upload deadline (120 s)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: beyond the limit of the file's type", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: the bytes are not a PNG, JPEG, GIF, WebP or MP4, or the body is not multipart/form-data", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (no part named `file`, or it is empty), `image_too_large` (dimensions or decoding memory past the limits), `undecodable_media`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_uploads`: the caller already has 2 uploads under way; `Retry-After`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` (uploads being read hold all the memory allowed, or every decoding slot is busy), `media_store_unavailable`, or the command could not be decided; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn upload(
    state: web::Data<ApiState>,
    service: web::Data<MediaService>,
    me: Authenticated,
    ctx: RequestContext,
    req: HttpRequest,
    mut form: Multipart,
) -> Result<HttpResponse, ApiError> {
    let settings = &service.settings;
    // A body announced past every limit is refused before it is read.
    let largest = settings.image_max_bytes.max(settings.video_max_bytes);
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The form's boundaries and part headers come on top of the file.
    if announced.is_some_and(|n| n > largest + 64 * 1024) {
        return Err(too_large(largest, "a file"));
    }
    let _under_way = service.start_upload(me.user_id)?;
    let (kind, bytes, _memory) = tokio::time::timeout(
        UPLOAD_DEADLINE,
        read_file(&mut form, settings, &service.memory),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            Code::UploadTooSlow,
            format!(
                "the upload did not arrive within {} s",
                UPLOAD_DEADLINE.as_secs()
            ),
        )
    })??;
    // An `Idempotency-Key` is bound to the file's bytes before anything is
    // stored: a retry of the same file is the same item (its id and command
    // derive from the key), the same key with another file is refused.
    let deferred = req.extensions().get::<DeferredKey>().cloned();
    let ctx = match deferred {
        Some(deferred) => match deferred.bind(&bytes).await? {
            Bound::Mine(key) => ctx.with_key(key),
            Bound::Answered(response) => return Ok(response),
        },
        None => ctx,
    };
    let id = Uuid::new_v5(&ctx.command_id(Some(me.user_id)), b"media");
    let decoded = match kind.image_format() {
        Some(format) => {
            let slot = tokio::time::timeout(DECODE_WAIT, service.decoding.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(|| ApiError::overloaded("every image decoding slot is busy; retry"))?;
            let (bytes, settings) = (bytes.clone(), settings.clone());
            let decoded = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                decode(&bytes, format, &settings)
            })
            .await
            .map_err(ApiError::internal)??;
            Some(decoded)
        }
        None => None,
    };
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    let stored = media::Stored {
        media_id: id,
        owner: me.user_id,
        content_type: kind.content_type().to_owned(),
        size: bytes.len() as u64,
        width: decoded.as_ref().map(|d| d.width),
        height: decoded.as_ref().map(|d| d.height),
        sha256,
        object_key: object_key(id),
        thumbnail_key: decoded.as_ref().map(|_| thumbnail_key(id)),
        thumbnail_content_type: decoded.as_ref().map(|_| "image/png".to_owned()),
    };
    let store = &service.store;
    store
        .put(
            &ObjectPath::from(stored.object_key.as_str()),
            PutPayload::from(bytes),
        )
        .await
        .map_err(store_error)?;
    if let (Some(decoded), Some(key)) = (decoded, &stored.thumbnail_key) {
        store
            .put(
                &ObjectPath::from(key.as_str()),
                PutPayload::from(decoded.thumbnail),
            )
            .await
            .map_err(store_error)?;
    }
    let command = ctx.envelope(
        ctx.command_id(Some(me.user_id)),
        Some(me.user_id),
        AggregateRef::new(AggregateType::Media, id.to_string()),
        AnyCommand::Media(media::Command::Upload {
            stored: stored.clone(),
            at: ctx.issued_at,
        }),
    );
    let outcome = state.bus.send(&command).await;
    let position = match outcome.map_err(ApiError::from).and_then(accepted) {
        Ok(position) => position,
        Err(error) => {
            // Nothing names these objects: the item was not recorded. (On a
            // timeout it may yet be; the sweeper then finds it unused and
            // removes it with its objects, if they are still there.)
            if error.code != Code::CommandTimeout.as_str() {
                remove_objects(
                    store.as_ref(),
                    &stored.object_key,
                    stored.thumbnail_key.as_deref(),
                )
                .await;
            }
            return Err(error);
        }
    };
    // A post naming the item right after finds it in the read model.
    state.projected(&position).await;
    let view = MediaView {
        id,
        url: read::url(id),
        content_type: stored.content_type,
        size: stored.size as i64,
        width: stored.width.map(|w| w as i32),
        height: stored.height.map(|h| h as i32),
        thumbnail_url: stored.thumbnail_key.map(|_| read::thumbnail_url(id)),
    };
    Ok(HttpResponse::Created()
        .insert_header(("X-Position", position.to_string()))
        .json(Uploaded {
            media: view,
            position,
        }))
}

/// Removes an item's objects; one already gone is fine. Errors are logged:
/// an object left behind costs space, never correctness.
pub async fn remove_objects(
    store: &dyn ObjectStore,
    object: &str,
    thumbnail: Option<&str>,
) -> bool {
    let mut removed = true;
    for key in std::iter::once(object).chain(thumbnail) {
        match store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => {
                tracing::warn!(%error, key, "removing a media object");
                removed = false;
            }
        }
    }
    removed
}

/// A byte range asked for with `Range`, against an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Range {
    /// No range, or one not understood (another unit, several ranges):
    /// the whole object, as RFC 9110 allows.
    Whole,
    /// From `.0` to `.1` inclusive.
    Part(u64, u64),
    /// Nothing of the object lies in the range: 416.
    Unsatisfiable,
}

pub fn range(header: Option<&str>, size: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => Range::Whole,
            Some(0) => Range::Unsatisfiable,
            Some(_) if size == 0 => Range::Unsatisfiable,
            Some(n) => Range::Part(size.saturating_sub(n), size - 1),
        },
        (first, "") => match number(first) {
            None => Range::Whole,
            Some(a) if a >= size => Range::Unsatisfiable,
            Some(a) => Range::Part(a, size - 1),
        },
        (first, last) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a <= b => match a >= size {
                true => Range::Unsatisfiable,
                false => Range::Part(a, b.min(size - 1)),
            },
            _ => Range::Whole,
        },
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn matches(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

/// Serves one object of the store.
async fn serve(
    req: &HttpRequest,
    store: &dyn ObjectStore,
    key: &str,
    content_type: &str,
    etag: String,
) -> Result<HttpResponse, ApiError> {
    let path = ObjectPath::from(key);
    let head = |mut response: actix_web::HttpResponseBuilder| {
        response
            .insert_header((header::ETAG, etag.clone()))
            .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
            .insert_header((header::ACCEPT_RANGES, "bytes"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
        response
    };
    if matches(req, &etag) {
        return Ok(head(HttpResponse::NotModified()).finish());
    }
    let size = store.head(&path).await.map_err(store_error)?.size;
    let asked = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let (status, bounds) = match range(asked, size) {
        Range::Whole => (StatusCode::OK, None),
        Range::Part(a, b) => (StatusCode::PARTIAL_CONTENT, Some((a, b))),
        Range::Unsatisfiable => {
            let mut response = crate::error_response(ApiError::new(
                Code::RangeNotSatisfiable,
                format!("the object has {size} bytes"),
            ));
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
            );
            return Ok(response);
        }
    };
    let options = GetOptions {
        range: bounds.map(|(a, b)| GetRange::Bounded(a..b + 1)),
        ..GetOptions::default()
    };
    let body = store
        .get_opts(&path, options)
        .await
        .map_err(store_error)?
        .into_stream();
    let mut response = head(HttpResponse::build(status));
    response.insert_header((header::CONTENT_TYPE, content_type.to_owned()));
    let length = match bounds {
        Some((a, b)) => {
            response.insert_header((header::CONTENT_RANGE, format!("bytes {a}-{b}/{size}")));
            b - a + 1
        }
        None => size,
    };
    Ok(response.no_chunking(length).streaming(body))
}

#[utoipa::path(get, path = "/media/{id}", tag = "social",
    params(("id" = Uuid, Path, description = "media id")),
    responses(
        (status = 200, description = "The bytes, with their sniffed type, a strong `ETag` (SHA-256) and `Accept-Ranges: bytes`", content(
            (String = "image/png"), (String = "image/jpeg"), (String = "image/gif"), (String = "image/webp"), (String = "video/mp4")
        )),
        (status = 206, description = "The byte range asked for with `Range` (`Content-Range`)", content(
            (String = "image/png"), (String = "image/jpeg"), (String = "image/gif"), (String = "image/webp"), (String = "video/mp4")
        )),
        (status = 304, description = "`If-None-Match` names the current `ETag`"),
        (status = 404, description = "no such item, or deleted", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "`range_not_satisfiable`: the range lies past the end (`Content-Range: bytes */size`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`media_store_unavailable`; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all)]
pub(crate) async fn original(
    req: HttpRequest,
    state: web::Data<ApiState>,
    service: web::Data<MediaService>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let row = read::live(&state.db, id.into_inner())
        .await?
        .ok_or_else(ApiError::not_found)?;
    let etag = format!("\"{}\"", row.sha256);
    serve(
        &req,
        service.store.as_ref(),
        &row.object_key,
        &row.content_type,
        etag,
    )
    .await
}

#[utoipa::path(get, path = "/media/{id}/thumbnail", tag = "social",
    params(("id" = Uuid, Path, description = "media id")),
    responses(
        (status = 200, description = "The thumbnail of an image (PNG, at most 320 pixels a side)", content_type = "image/png", body = String),
        (status = 206, description = "The byte range asked for with `Range`", content_type = "image/png", body = String),
        (status = 304, description = "`If-None-Match` names the current `ETag`"),
        (status = 404, description = "no such item, deleted, or a video (no thumbnail)", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "`range_not_satisfiable`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`media_store_unavailable`; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all)]
pub(crate) async fn thumbnail(
    req: HttpRequest,
    state: web::Data<ApiState>,
    service: web::Data<MediaService>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let row = read::live(&state.db, id.into_inner())
        .await?
        .ok_or_else(ApiError::not_found)?;
    let (Some(key), Some(content_type)) = (&row.thumbnail_key, &row.thumbnail_content_type) else {
        return Err(ApiError::not_found());
    };
    // The thumbnail follows from the original: the original's digest,
    // marked, is as strong a validator.
    let etag = format!("\"{}-thumbnail\"", row.sha256);
    serve(&req, service.store.as_ref(), key, content_type, etag).await
}

/// The most media items a post or a message shows.
pub(crate) const MAX_ITEMS: usize = 4;

/// A post's or a message's `media_ids`: at most [`MAX_ITEMS`], each once.
pub(crate) fn ids(ids: &[Uuid]) -> Result<Vec<Uuid>, String> {
    let unique: std::collections::HashSet<&Uuid> = ids.iter().collect();
    match ids.len() {
        n if n > MAX_ITEMS => Err(format!("at most {MAX_ITEMS} media items")),
        n if unique.len() < n => Err("each media item at most once".to_owned()),
        _ => Ok(ids.to_vec()),
    }
}

/// Has each media item's decider attach it to the post or message, after a look at
/// the read model that turns away, with nothing appended, what is unknown,
/// deleted or someone else's. The deciders have the last word (the sweeper
/// may have deleted an item since): an item one of them refuses is a field
/// error too; the items attached before it stay attached and are not swept,
/// and the post or message is not written. Command ids follow from the
/// write's, so a retried write attaches nothing twice.
pub(crate) async fn attach(
    state: &ApiState,
    me: &Authenticated,
    ctx: &RequestContext,
    command_id: Uuid,
    holder: Holder,
    items: &[Uuid],
) -> Result<(), ApiError> {
    if items.is_empty() {
        return Ok(());
    }
    let found = tidings_projections::media::by_ids(&state.db, items).await?;
    let refused = |index: usize, message: &str| {
        FieldError::new(&format!("media_ids[{index}]"), message.to_owned())
    };
    let mut errors = Vec::new();
    for (index, id) in items.iter().enumerate() {
        match found.iter().find(|row| row.id == *id) {
            None => errors.push(refused(index, "no such media item")),
            Some(row) if row.owner_id != me.user_id => {
                errors.push(refused(index, "a media item of someone else"))
            }
            Some(row) if row.deleted_at.is_some() => {
                errors.push(refused(index, "this media item was deleted"))
            }
            Some(_) => {}
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let outcomes = futures_util::future::join_all(items.iter().map(|media_id| {
        let command = ctx.envelope(
            Uuid::new_v5(&command_id, media_id.as_bytes()),
            Some(me.user_id),
            AggregateRef::new(AggregateType::Media, media_id.to_string()),
            AnyCommand::Media(media::Command::Attach {
                holder,
                by: me.user_id,
                at: ctx.issued_at,
            }),
        );
        async move { state.bus.send(&command).await }
    }))
    .await;
    let mut errors = Vec::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        if let tidings_commands::Outcome::Rejected { message, .. } = outcome? {
            errors.push(refused(index, &message));
        }
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(ApiError::validation(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_sniffed_from_the_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some(Kind::Png));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01"), Some(Kind::Jpeg));
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0\0\0"), Some(Kind::Gif));
        assert_eq!(sniff(b"RIFF\x24\0\0\0WEBPVP8 "), Some(Kind::Webp));
        assert_eq!(sniff(b"RIFF\x24\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"\0\0\0\x18ftypmp42\0\0\0\0"), Some(Kind::Mp4));
        assert_eq!(sniff(b"\0\0\0\x18ftypheic\0\0\0\0"), None);
        assert_eq!(sniff(b"hello, this is text"), None);
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(range(None, 10), Range::Whole);
        assert_eq!(range(Some("bytes=0-3"), 10), Range::Part(0, 3));
        assert_eq!(range(Some("bytes=5-"), 10), Range::Part(5, 9));
        assert_eq!(range(Some("bytes=-4"), 10), Range::Part(6, 9));
        assert_eq!(range(Some("bytes=-40"), 10), Range::Part(0, 9));
        assert_eq!(range(Some("bytes=8-100"), 10), Range::Part(8, 9));
        assert_eq!(range(Some("bytes=10-"), 10), Range::Unsatisfiable);
        assert_eq!(range(Some("bytes=-0"), 10), Range::Unsatisfiable);
        assert_eq!(range(Some("bytes=3-1"), 10), Range::Whole);
        assert_eq!(range(Some("bytes=0-1,4-5"), 10), Range::Whole);
        assert_eq!(range(Some("items=0-1"), 10), Range::Whole);
        assert_eq!(range(Some("bytes=x-1"), 10), Range::Whole);
    }
}

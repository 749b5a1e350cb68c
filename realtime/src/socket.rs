//! The WebSocket's writing half: the frames a session writes are encoded
//! straight into a buffer that the HTTP/1 dispatcher of the connection takes
//! as the response body.
//!
//! actix-ws's own writing half goes through a 32-message channel whose first
//! block (about 1.3 kB) and shared state are allocated when the socket opens
//! and held for as long as it lives, though an idle socket writes nothing.
//! Here an idle socket holds one small shared cell; bytes are held only
//! while frames wait for the socket. The session task and the connection's
//! dispatcher run on the same worker thread (actix-web spawns handlers'
//! tasks there), so the cell is an `Rc<RefCell<…>>`, not a lock.
//!
//! Reading stays with actix-ws ([`actix_ws::MessageStream`]).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_http::ws::{handshake, CloseReason, OpCode, Parser};
use actix_web::body::{BodySize, MessageBody};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{Closed, MessageStream};

/// Bytes of encoded frames a session may have waiting for the socket before
/// a write waits. A write is taken whenever less than this is waiting, so a
/// frame of any size gets in, and what waits stays below this plus one frame.
/// A client that stops reading fills the socket's buffers, then the
/// dispatcher's (32 kB), then this, and the session's next write waits.
pub const PENDING_LIMIT: usize = 64 * 1024;

/// Accepts a WebSocket handshake: the `101` response, whose body carries
/// what the [`Writer`] writes, the writer, and the client's messages.
pub fn open(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(HttpResponse, Writer, MessageStream), actix_web::Error> {
    let mut response = handshake(req.head())?;
    // actix-ws reads the client's frames; its writing half (a channel and
    // the body that drains it) is not used and is dropped at once.
    let (_, _, messages) = actix_ws::handle(req, payload)?;
    let shared = Rc::new(RefCell::new(Shared::default()));
    let body = Body(shared.clone()).boxed();
    Ok((
        response.message_body(body)?.into(),
        Writer(shared),
        messages,
    ))
}

/// What the writer and the response body share.
#[derive(Default)]
struct Shared {
    /// Frames encoded and not yet taken by the dispatcher.
    pending: BytesMut,
    /// The writer is gone: once `pending` is taken, the body ends.
    finished: bool,
    /// The body is gone (the connection ended): writes fail.
    gone: bool,
    /// The dispatcher, waiting for frames.
    body_waker: Option<Waker>,
    /// The writer, waiting for `pending` to drain.
    writer_waker: Option<Waker>,
}

/// Writes frames to the client. Dropped, it ends the response once the
/// frames already written have gone out.
pub struct Writer(Rc<RefCell<Shared>>);

impl Writer {
    pub async fn text(&mut self, text: String) -> Result<(), Closed> {
        self.write(|dst| Parser::write_message(dst, text.as_bytes(), OpCode::Text, true, false))
            .await
    }

    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), Closed> {
        self.write(|dst| Parser::write_message(dst, payload, OpCode::Ping, true, false))
            .await
    }

    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), Closed> {
        self.write(|dst| Parser::write_message(dst, payload, OpCode::Pong, true, false))
            .await
    }

    /// Writes a Close frame; nothing can be written after it.
    pub async fn close(mut self, reason: Option<CloseReason>) -> Result<(), Closed> {
        self.write(|dst| Parser::write_close(dst, reason, false))
            .await
    }

    /// Waits until fewer than [`PENDING_LIMIT`] bytes wait for the socket,
    /// then encodes one frame after them.
    async fn write(&mut self, encode: impl FnOnce(&mut BytesMut)) -> Result<(), Closed> {
        poll_fn(|cx| {
            let mut shared = self.0.borrow_mut();
            if shared.gone {
                return Poll::Ready(Err(Closed));
            }
            if shared.pending.len() >= PENDING_LIMIT {
                shared.writer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        })
        .await?;
        let waker = {
            let mut shared = self.0.borrow_mut();
            encode(&mut shared.pending);
            shared.body_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let waker = {
            let mut shared = self.0.borrow_mut();
            shared.finished = true;
            shared.body_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The response body: what the writer wrote, for as long as it writes.
struct Body(Rc<RefCell<Shared>>);

impl MessageBody for Body {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let mut shared = self.0.borrow_mut();
        if !shared.pending.is_empty() {
            // Taken whole: an idle socket keeps no buffer.
            let frames = std::mem::take(&mut shared.pending).freeze();
            let waker = shared.writer_waker.take();
            drop(shared);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Poll::Ready(Some(Ok(frames)));
        }
        if shared.finished {
            return Poll::Ready(None);
        }
        shared.body_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let waker = {
            let mut shared = self.0.borrow_mut();
            shared.gone = true;
            shared.writer_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Writer, Body) {
        let shared = Rc::new(RefCell::new(Shared::default()));
        (Writer(shared.clone()), Body(shared))
    }

    fn next(body: &mut Body) -> Poll<Option<Bytes>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(body)
            .poll_next(&mut cx)
            .map(|item| item.map(|bytes| bytes.unwrap()))
    }

    #[tokio::test]
    async fn frames_come_out_of_the_body_in_order_and_the_end_follows_the_writer() {
        let (mut writer, mut body) = pair();
        assert_eq!(next(&mut body), Poll::Pending);
        writer.text("hi".into()).await.unwrap();
        writer.ping(b"").await.unwrap();
        // An unmasked text frame of 2 bytes, then an empty ping.
        assert_eq!(
            next(&mut body),
            Poll::Ready(Some(Bytes::from_static(b"\x81\x02hi\x89\x00")))
        );
        assert_eq!(next(&mut body), Poll::Pending);
        writer.close(None).await.unwrap();
        assert_eq!(
            next(&mut body),
            Poll::Ready(Some(Bytes::from_static(b"\x88\x00")))
        );
        assert_eq!(next(&mut body), Poll::Ready(None));
    }

    #[tokio::test]
    async fn a_write_waits_while_the_limit_is_pending_and_fails_once_the_body_is_gone() {
        let (mut writer, mut body) = pair();
        writer.text("x".repeat(PENDING_LIMIT)).await.unwrap();
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            writer.text("y".into()),
        )
        .await;
        assert!(waiting.is_err(), "a write past the limit did not wait");
        assert!(matches!(next(&mut body), Poll::Ready(Some(_))));
        writer.text("y".into()).await.unwrap();
        drop(body);
        assert!(writer.text("z".into()).await.is_err());
    }
}

//! The WebSocket's writing half: a queue of encoded frames, bounded in
//! bytes, that the HTTP/1 dispatcher of the connection takes as the response
//! body.
//!
//! A write never waits. What the client has not taken yet waits here, and
//! each frame waits as its delivery contract ([`Delivery`]) says: a durable
//! frame must arrive, and past the budget the session ends (4009: the client
//! resumes with `since`); a state frame replaces the older value of the same
//! state still waiting (last value wins); an ephemeral frame is dropped once
//! half the budget waits. A client that stops reading fills its own queue and
//! no other: the session, the hub and every other socket go on. (Below the
//! queue, the HTTP dispatcher holds up to 32 KiB and the kernel 16 KiB
//! unsent: `TCP_NOTSENT_LOWAT`, set on every connection in `src/app.rs`.)
//!
//! actix-ws's own writing half goes through a 32-message channel whose first
//! block (about 1.3 kB) and shared state are allocated when the socket opens
//! and held for as long as it lives, though an idle socket writes nothing.
//! Here an idle socket holds one small shared cell and an empty queue; bytes
//! are held only while frames wait for the socket. The session task and the
//! connection's dispatcher run on the same worker thread (actix-web spawns
//! handlers' tasks there), so the cell is an `Rc<RefCell<…>>`, not a lock.
//!
//! Reading stays with actix-ws ([`actix_ws::MessageStream`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_http::ws::{handshake, CloseReason, OpCode, Parser};
use actix_web::body::{BodySize, MessageBody};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::MessageStream;

/// How a frame waits for a client that reads slower than frames come
/// (DESIGN.md, three delivery contracts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Must arrive, in order (messages, notifications, answers): past the
    /// budget the session ends with 4009 and the client resumes.
    Durable,
    /// Only the latest value matters (counts, unread counts, presence): a
    /// newer frame of the same state replaces one still waiting.
    State(u64),
    /// At most once (typing): dropped while half the budget waits.
    Ephemeral,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The connection is gone.
    Closed,
    /// A durable frame would take the queue past its budget.
    Full,
}

/// What became of a frame that was queued or let go.
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    Queued,
    /// It replaced an older value of its state that was still waiting.
    Conflated,
    /// An ephemeral frame let go under pressure.
    Dropped,
}

/// Bytes the sockets of this process have waiting, for `/metrics`.
const QUEUE_GAUGE: &str = "tidings_ws_queue_bytes";

/// Accepts a WebSocket handshake: the `101` response, whose body carries
/// what the [`Writer`] writes, the writer, and the client's messages.
pub fn open(
    req: &HttpRequest,
    payload: web::Payload,
    budget: usize,
) -> Result<(HttpResponse, Writer, MessageStream), actix_web::Error> {
    let mut response = handshake(req.head())?;
    // actix-ws reads the client's frames; its writing half (a channel and
    // the body that drains it) is not used and is dropped at once.
    let (_, _, messages) = actix_ws::handle(req, payload)?;
    let shared = Rc::new(RefCell::new(Shared::default()));
    let body = Body(shared.clone()).boxed();
    Ok((
        response.message_body(body)?.into(),
        Writer { shared, budget },
        messages,
    ))
}

/// A frame waiting for the socket.
struct Frame {
    /// The state it is a value of, if it is one.
    state: Option<u64>,
    bytes: Bytes,
}

/// What the writer and the response body share.
#[derive(Default)]
struct Shared {
    /// Frames encoded and not yet taken by the dispatcher, oldest first.
    queue: VecDeque<Frame>,
    /// Their bytes.
    queued: usize,
    /// The writer is gone: once the queue is taken, the body ends.
    finished: bool,
    /// The body is gone (the connection ended): writes fail.
    gone: bool,
    /// The dispatcher, waiting for frames.
    body_waker: Option<Waker>,
    /// The writer, waiting for the client to take frames
    /// ([`Writer::writable`]).
    writer_waker: Option<Waker>,
}

/// Writes frames to the client. Dropped, it ends the response once the
/// frames already queued have gone out.
pub struct Writer {
    shared: Rc<RefCell<Shared>>,
    /// The most bytes that may wait (a frame larger than it still gets in
    /// when nothing waits).
    budget: usize,
}

/// A text frame encoded once, to be queued on any number of sockets: the
/// server's frames are not masked, so an update goes out byte for byte the
/// same to each of its subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    bytes: Bytes,
    delivery: Delivery,
}

impl Encoded {
    pub fn text(text: &str, delivery: Delivery) -> Self {
        let bytes =
            encode(|dst| Parser::write_message(dst, text.as_bytes(), OpCode::Text, true, false));
        Encoded { bytes, delivery }
    }
}

impl Writer {
    pub fn text(&mut self, text: &str, delivery: Delivery) -> Result<Queued, Refused> {
        self.encoded(&Encoded::text(text, delivery))
    }

    /// Queues a frame encoded beforehand (its bytes are shared, not copied).
    pub fn encoded(&mut self, frame: &Encoded) -> Result<Queued, Refused> {
        self.push(frame.bytes.clone(), frame.delivery)
    }

    /// Pings, pongs and closes are small and always queued.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), Refused> {
        let bytes = encode(|dst| Parser::write_message(dst, payload, OpCode::Ping, true, false));
        self.control(bytes)
    }

    pub fn pong(&mut self, payload: &[u8]) -> Result<(), Refused> {
        let bytes = encode(|dst| Parser::write_message(dst, payload, OpCode::Pong, true, false));
        self.control(bytes)
    }

    /// Queues a Close frame, after what waits (or instead of it, when
    /// `discard`: a client too slow to keep up resumes anyway, and its
    /// queue is let go at once); nothing can be written after it.
    pub fn close(mut self, reason: Option<CloseReason>, discard: bool) -> Result<(), Refused> {
        if discard {
            let mut shared = self.shared.borrow_mut();
            metrics::gauge!(QUEUE_GAUGE).decrement(shared.queued as f64);
            shared.queue = VecDeque::new();
            shared.queued = 0;
        }
        let bytes = encode(|dst| Parser::write_close(dst, reason, false));
        self.control(bytes)
    }

    /// Bytes waiting for the client.
    pub fn queued(&self) -> usize {
        self.shared.borrow().queued
    }

    /// Waits until at most half the budget waits for the client, or the
    /// connection is gone: a sender of many durable frames at once (a
    /// replay) goes at the pace the client reads instead of past the budget.
    pub async fn writable(&self) {
        std::future::poll_fn(|cx| {
            let mut shared = self.shared.borrow_mut();
            if shared.gone || shared.queued <= self.budget / 2 {
                return Poll::Ready(());
            }
            shared.writer_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn control(&mut self, bytes: Bytes) -> Result<(), Refused> {
        if self.shared.borrow().gone {
            return Err(Refused::Closed);
        }
        self.enqueue(None, bytes);
        Ok(())
    }

    fn push(&mut self, bytes: Bytes, delivery: Delivery) -> Result<Queued, Refused> {
        let mut shared = self.shared.borrow_mut();
        if shared.gone {
            return Err(Refused::Closed);
        }
        let mut outcome = Queued::Queued;
        match delivery {
            Delivery::Ephemeral if shared.queued > self.budget / 2 => return Ok(Queued::Dropped),
            Delivery::State(key) => {
                if let Some(i) = shared.queue.iter().position(|f| f.state == Some(key)) {
                    let older = shared.queue.remove(i).expect("found");
                    shared.queued -= older.bytes.len();
                    metrics::gauge!(QUEUE_GAUGE).decrement(older.bytes.len() as f64);
                    outcome = Queued::Conflated;
                }
            }
            _ => {}
        }
        if shared.queued > 0 && shared.queued + bytes.len() > self.budget {
            return Err(Refused::Full);
        }
        drop(shared);
        let state = match delivery {
            Delivery::State(key) => Some(key),
            _ => None,
        };
        self.enqueue(state, bytes);
        Ok(outcome)
    }

    fn enqueue(&mut self, state: Option<u64>, bytes: Bytes) {
        let waker = {
            let mut shared = self.shared.borrow_mut();
            shared.queued += bytes.len();
            metrics::gauge!(QUEUE_GAUGE).increment(bytes.len() as f64);
            shared.queue.push_back(Frame { state, bytes });
            shared.body_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

fn encode(write: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut dst = BytesMut::new();
    write(&mut dst);
    dst.freeze()
}

impl Drop for Writer {
    fn drop(&mut self) {
        let waker = {
            let mut shared = self.shared.borrow_mut();
            shared.finished = true;
            shared.body_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The response body: what the writer queued, for as long as it writes.
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
        if !shared.queue.is_empty() {
            // Taken whole: an idle socket keeps no buffer.
            let frames = std::mem::take(&mut shared.queue);
            metrics::gauge!(QUEUE_GAUGE).decrement(shared.queued as f64);
            shared.queued = 0;
            if let Some(writer) = shared.writer_waker.take() {
                writer.wake();
            }
            let bytes = if frames.len() == 1 {
                frames.into_iter().next().expect("one").bytes
            } else {
                let mut all = BytesMut::with_capacity(frames.iter().map(|f| f.bytes.len()).sum());
                for frame in frames {
                    all.extend_from_slice(&frame.bytes);
                }
                all.freeze()
            };
            return Poll::Ready(Some(Ok(bytes)));
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
        let mut shared = self.0.borrow_mut();
        shared.gone = true;
        metrics::gauge!(QUEUE_GAUGE).decrement(shared.queued as f64);
        shared.queued = 0;
        shared.queue = VecDeque::new();
        if let Some(writer) = shared.writer_waker.take() {
            writer.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(budget: usize) -> (Writer, Body) {
        let shared = Rc::new(RefCell::new(Shared::default()));
        (
            Writer {
                shared: shared.clone(),
                budget,
            },
            Body(shared),
        )
    }

    fn next(body: &mut Body) -> Poll<Option<Bytes>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(body)
            .poll_next(&mut cx)
            .map(|item| item.map(|bytes| bytes.unwrap()))
    }

    /// The texts of the unmasked text frames in `bytes` (short ones).
    fn texts(bytes: &[u8]) -> Vec<String> {
        let mut texts = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 2 {
            let len = usize::from(rest[1] & 0x7f);
            assert!(len < 126, "short frames only");
            if rest[0] == 0x81 {
                texts.push(String::from_utf8(rest[2..2 + len].to_vec()).unwrap());
            }
            rest = &rest[2 + len..];
        }
        texts
    }

    #[test]
    fn frames_come_out_of_the_body_in_order_and_the_end_follows_the_writer() {
        let (mut writer, mut body) = pair(1024);
        assert_eq!(next(&mut body), Poll::Pending);
        writer.text("hi", Delivery::Durable).unwrap();
        writer.ping(b"").unwrap();
        // An unmasked text frame of 2 bytes, then an empty ping.
        assert_eq!(
            next(&mut body),
            Poll::Ready(Some(Bytes::from_static(b"\x81\x02hi\x89\x00")))
        );
        assert_eq!(next(&mut body), Poll::Pending);
        writer.close(None, false).unwrap();
        assert_eq!(
            next(&mut body),
            Poll::Ready(Some(Bytes::from_static(b"\x88\x00")))
        );
        assert_eq!(next(&mut body), Poll::Ready(None));
    }

    #[test]
    fn a_durable_frame_past_the_budget_is_refused_and_a_gone_body_refuses_all() {
        let (mut writer, mut body) = pair(100);
        // A frame larger than the budget gets in when nothing waits.
        writer.text(&"x".repeat(200), Delivery::Durable).unwrap();
        assert_eq!(
            writer.text("y", Delivery::Durable),
            Err(Refused::Full),
            "a durable frame past the budget was queued"
        );
        assert!(matches!(next(&mut body), Poll::Ready(Some(_))));
        assert_eq!(writer.queued(), 0);
        writer.text("y", Delivery::Durable).unwrap();
        drop(body);
        assert_eq!(writer.text("z", Delivery::Durable), Err(Refused::Closed));
    }

    #[test]
    fn a_writer_waits_until_the_client_took_what_waits_or_is_gone() {
        use std::future::Future as _;
        let mut cx = Context::from_waker(Waker::noop());
        let (mut writer, mut body) = pair(100);
        writer.text(&"x".repeat(40), Delivery::Durable).unwrap();
        let mut writable = Box::pin(writer.writable());
        assert_eq!(
            writable.as_mut().poll(&mut cx),
            Poll::Ready(()),
            "half waits"
        );
        drop(writable);
        writer.text(&"x".repeat(40), Delivery::Durable).unwrap();
        let mut writable = Box::pin(writer.writable());
        assert_eq!(writable.as_mut().poll(&mut cx), Poll::Pending);
        assert!(matches!(next(&mut body), Poll::Ready(Some(_))));
        assert_eq!(writable.as_mut().poll(&mut cx), Poll::Ready(()));
        drop(writable);
        writer.text(&"x".repeat(120), Delivery::Durable).unwrap();
        let mut writable = Box::pin(writer.writable());
        assert_eq!(writable.as_mut().poll(&mut cx), Poll::Pending);
        drop(body);
        assert_eq!(writable.as_mut().poll(&mut cx), Poll::Ready(()), "gone");
    }

    #[test]
    fn a_state_keeps_its_last_value_and_ephemeral_frames_go_first() {
        let (mut writer, mut body) = pair(64);
        assert_eq!(
            writer.text("a1", Delivery::State(1)).unwrap(),
            Queued::Queued
        );
        writer.text("m1", Delivery::Durable).unwrap();
        assert_eq!(
            writer.text("b1", Delivery::State(2)).unwrap(),
            Queued::Queued
        );
        assert_eq!(
            writer.text("a2", Delivery::State(1)).unwrap(),
            Queued::Conflated
        );
        writer.text("t1", Delivery::Ephemeral).unwrap();
        // Past half the budget, typing is let go; durable frames still fit.
        writer.text(&"m".repeat(20), Delivery::Durable).unwrap();
        assert_eq!(
            writer.text("t2", Delivery::Ephemeral).unwrap(),
            Queued::Dropped
        );
        let Poll::Ready(Some(bytes)) = next(&mut body) else {
            panic!("nothing queued")
        };
        assert_eq!(
            texts(&bytes),
            ["m1", "b1", "a2", "t1", &"m".repeat(20)],
            "the newer value of state 1 takes the place of the older one at the end"
        );
    }

    #[test]
    fn a_close_that_discards_lets_the_queue_go() {
        let (mut writer, mut body) = pair(1024);
        writer.text("old", Delivery::Durable).unwrap();
        writer.close(None, true).unwrap();
        assert_eq!(
            next(&mut body),
            Poll::Ready(Some(Bytes::from_static(b"\x88\x00")))
        );
        assert_eq!(next(&mut body), Poll::Ready(None));
    }
}

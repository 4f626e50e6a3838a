//! A connection's watchdog: which phase it is in (reading a request head, idle, busy with
//! requests) and since when, moved on by the bytes it reads and the requests it serves.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::HttpLimits;

/// What a connection is doing, for its watchdog.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request head: since the accept, or since the first byte after an idle time.
    Head(Instant),
    /// Kept alive between requests, since the last response ended.
    Idle(Instant),
    /// Requests in flight (more than one when pipelined).
    Busy(usize),
}

/// The phase of one connection, moved on by its reads and its requests.
pub(super) struct Activity {
    /// A std Mutex: it is held for an assignment, never across an await.
    phase: Mutex<Phase>,
    /// Since when a write has waited for the client to read (the socket's buffer full), if one is
    /// waiting.
    write_blocked: Mutex<Option<Instant>>,
    /// Wakes the watchdog when a deadline may have moved earlier or appeared.
    changed: Notify,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Head(Instant::now())),
            write_blocked: Mutex::new(None),
            changed: Notify::new(),
        }
    }

    fn update(&self, next: impl FnOnce(Phase) -> Option<Phase>) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(next) = next(*phase) {
            *phase = next;
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: after an idle time they start a request head.
    fn read(&self) {
        self.update(|phase| match phase {
            Phase::Idle(_) => Some(Phase::Head(Instant::now())),
            Phase::Head(_) | Phase::Busy(_) => None,
        });
    }

    /// A write returned: `blocked` if it must wait for the client to read.
    fn wrote(&self, blocked: bool) {
        let mut since = self
            .write_blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (*since, blocked) {
            (None, true) => {
                *since = Some(Instant::now());
                drop(since);
                self.changed.notify_one();
            }
            (Some(_), false) => *since = None,
            _ => {}
        }
    }

    /// The earliest deadline of the connection and what it is: its phase's (none while busy) or
    /// a blocked write's.
    fn deadline(&self, limits: HttpLimits) -> Option<(Instant, &'static str)> {
        let phase = match *self.phase.lock().unwrap_or_else(PoisonError::into_inner) {
            Phase::Head(since) => Some((since + limits.header_read_timeout, "header read timeout")),
            Phase::Idle(since) => Some((since + limits.idle_timeout, "idle timeout")),
            Phase::Busy(_) => None,
        };
        let stalled = self
            .write_blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|since| (since + limits.write_stall_timeout, "write stall timeout"));
        match (phase, stalled) {
            (Some(p), Some(w)) => Some(if w.0 < p.0 { w } else { p }),
            (p, w) => p.or(w),
        }
    }

    /// Returns when the connection has stayed in a phase past its deadline.
    pub(super) async fn expired(&self, limits: HttpLimits) -> &'static str {
        loop {
            match self.deadline(limits) {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    let _ = tokio::time::timeout_at(at, self.changed.notified()).await;
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// One request in flight on a connection, from its head until its response is sent or dropped.
pub(super) struct Busy(Arc<Activity>);

impl Busy {
    pub(super) fn begin(activity: &Arc<Activity>) -> Self {
        activity.update(|phase| match phase {
            Phase::Busy(n) => Some(Phase::Busy(n + 1)),
            Phase::Head(_) | Phase::Idle(_) => Some(Phase::Busy(1)),
        });
        Self(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.update(|phase| match phase {
            Phase::Busy(n) if n > 1 => Some(Phase::Busy(n - 1)),
            _ => Some(Phase::Idle(Instant::now())),
        });
    }
}

/// A response body that keeps its request in flight until hyper has sent or dropped it.
pub(super) struct Tracked {
    body: Body,
    _busy: Busy,
}

impl Tracked {
    pub(super) fn new(body: Body, busy: Busy) -> Self {
        Self { body, _busy: busy }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, telling its activity when bytes arrive and when writes wait.
pub(super) struct Watched {
    pub(super) stream: TcpStream,
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.activity.wrote(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.activity.wrote(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

//! The HTTP server: our own accept loop around hyper's HTTP/1 connections, in place of
//! `axum::serve`, which has no header-read or idle timeout and no connection cap.
//!
//! What it promises:
//! - At most `max_connections` connections are served at once. The loop accepts no more until one
//!   closes, so the rest wait in the kernel's listen backlog: never an unbounded number of tasks.
//! - A connection is always in one of three phases, each bounded: reading a request head (the
//!   header-read timeout, from the accept or from the first byte of a later request), idle between
//!   requests (the idle timeout), or busy with a request, which its handler bounds (body limits in
//!   `http::accruals`; event streams end when shutdown starts).
//! - Whatever the phase, a connection whose writes have waited for the client longer than the
//!   write-stall timeout is closed: a response nobody reads (a download, an event stream) ends
//!   rather than holding its connection, its slot and its data.
//! - On shutdown the listener closes at once, idle connections close, requests in flight have the
//!   grace to finish, and whatever is still open then is dropped, so `serve` returns within it.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use accrual_core::settings::{Problems, parse_duration};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use activity::{Activity, Busy, Tracked, Watched};

mod activity;

/// After an accept error other than a refused handshake (most likely out of file descriptors),
/// wait this long for connections to close rather than spin on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The HTTP server's ports and connection limits (both ports).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpSettings {
    /// Address the HTTP API listens on.
    #[arg(long, env = "SENDER_ADDR", default_value = "127.0.0.1:8080")]
    pub sender_addr: SocketAddr,

    /// Address of the operations port: `/metrics`, `/readyz` and `/healthz`, for Prometheus and
    /// the orchestrator's probes, never for clients (the API port serves none of it but
    /// `/healthz`). Port 0 picks a free one.
    #[arg(long, env = "SENDER_OPS_ADDR", default_value = "127.0.0.1:8082")]
    pub sender_ops_addr: SocketAddr,

    /// Longest a client may take to send a request's headers, counted from the connection's
    /// accept or from the first byte of a later request on a kept-alive connection (e.g. 10s).
    #[arg(long, env = "SENDER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub sender_header_read_timeout: Duration,

    /// Longest a kept-alive connection may wait for its next request before it is closed (e.g.
    /// 75s).
    #[arg(long, env = "SENDER_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub sender_idle_timeout: Duration,

    /// Longest a response may wait to write a byte (the client reads none of it) before its
    /// connection is closed (e.g. 30s; at least 1s): a download nobody reads does not stay open.
    #[arg(long, env = "SENDER_WRITE_STALL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub sender_write_stall_timeout: Duration,

    /// Most HTTP connections served at once; further ones wait in the listen backlog until one
    /// closes. Keep it under the open-file limit less the pools' connections.
    #[arg(long, env = "SENDER_MAX_CONNECTIONS", default_value_t = 1024)]
    pub sender_max_connections: usize,
}

/// The longest HTTP timeout accepted: longer is no limit at all, and far enough ahead a deadline
/// would overflow the clock.
pub const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Records a problem unless `timeout` (the setting `name`) is above zero and at most
/// [`MAX_HTTP_TIMEOUT`]: the rule every HTTP timeout of the sender's settings follows.
pub fn require_http_timeout(problems: &mut Problems, timeout: Duration, name: &str) {
    problems.require(
        !timeout.is_zero() && timeout <= MAX_HTTP_TIMEOUT,
        &format!(
            "{name} must be above zero (every connection or body would be cut) and at most 24h"
        ),
    );
}

impl HttpSettings {
    /// Refuses ports that clash and timeouts that would cut every connection or never end.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        problems.require(
            !clash(self.sender_ops_addr, self.sender_addr),
            "SENDER_OPS_ADDR must not be SENDER_ADDR's port (metrics and readiness have a port of their own)",
        );
        for (timeout, name) in [
            (
                self.sender_header_read_timeout,
                "SENDER_HEADER_READ_TIMEOUT",
            ),
            (self.sender_idle_timeout, "SENDER_IDLE_TIMEOUT"),
        ] {
            require_http_timeout(&mut problems, timeout, name);
        }
        problems.require(
            (Duration::from_secs(1)..=MAX_HTTP_TIMEOUT).contains(&self.sender_write_stall_timeout),
            "SENDER_WRITE_STALL_TIMEOUT must be at least 1s (a client reading at its own pace would be cut) and at most 24h",
        );
        problems.require(
            self.sender_max_connections >= 1,
            "SENDER_MAX_CONNECTIONS must be at least 1 (no connection would be served)",
        );
        problems.into_group_result()
    }

    /// The API port's limits, connections finishing within `shutdown_grace` on shutdown.
    pub fn limits(&self, shutdown_grace: Duration) -> HttpLimits {
        HttpLimits {
            header_read_timeout: self.sender_header_read_timeout,
            idle_timeout: self.sender_idle_timeout,
            write_stall_timeout: self.sender_write_stall_timeout,
            max_connections: self.sender_max_connections,
            shutdown_grace,
        }
    }
}

/// Whether two listen addresses would want the same socket: one port (not 0, which picks a free
/// one) on one address, or on all of them.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The server's limits on connections (from [`HttpSettings`]).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Longest a response may wait to write (the client reads nothing) before the connection is
    /// closed.
    pub write_stall_timeout: Duration,
    pub max_connections: usize,
    /// How long connections may finish their requests once shutdown starts.
    pub shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then for at most the grace.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    // Cancelled when the grace is over: every connection task then drops its connection.
    let hard_stop = CancellationToken::new();
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "Connection cap reached; new connections wait in the listen backlog"
                );
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break, // never closed
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let stops = (shutdown.clone(), hard_stop.clone());
                connections.spawn(connection(stream, router.clone(), limits, stops, slot));
            }
            Err(e) if is_handshake_error(&e) => {}
            Err(e) => {
                tracing::error!(error = %e, "Failed to accept a connection");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    // New connections are refused from here on.
    drop(listener);
    connections.close();
    let drained = tokio::time::timeout(limits.shutdown_grace, connections.wait()).await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace_secs = limits.shutdown_grace.as_secs(),
            "Connections still open at the end of the shutdown grace; dropping them"
        );
        hard_stop.cancel();
        connections.wait().await;
    }
}

/// A client that gave up during the handshake: nothing to do, nothing to report.
fn is_handshake_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, its watchdog fires or the grace is over; `_slot` is its
/// place under the connection cap, given back when this returns.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: HttpLimits,
    (shutdown, hard_stop): (CancellationToken, CancellationToken),
    _slot: OwnedSemaphorePermit,
) {
    // Small answers (a 202, one progress event) leave at once instead of waiting for more.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let watched = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = Busy::begin(&watched);
        // A Router is always ready: calling it without `poll_ready` is what axum does too.
        let response = router.clone().call(request);
        async move {
            let response = response.await?;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
        }
    });
    // The header-read timeout is the watchdog's, which, unlike hyper's, is not also the idle one.
    let mut builder = http1::Builder::new();
    let served = builder
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut served = pin!(served);
    let mut expired = pin!(activity.expired(limits));
    let mut draining = false;
    loop {
        tokio::select! {
            ended = served.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "Connection ended with an error");
                }
                return;
            }
            why = &mut expired => {
                tracing::debug!(why, "Closing a connection");
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                // Closes it if idle; otherwise after the request in flight.
                served.as_mut().graceful_shutdown();
            }
            () = hard_stop.cancelled() => return,
        }
    }
}

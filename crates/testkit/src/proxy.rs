//! A TCP proxy that a test can cut and restore, to give a service a real network outage.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards connections from `127.0.0.1:port` to an upstream address until dropped.
pub struct TcpProxy {
    pub port: u16,
    state: Arc<State>,
    stop: CancellationToken,
}

struct State {
    /// Cancelled when the proxy is cut or stalled: ends the forwarding of every connection opened
    /// before.
    generation: Mutex<CancellationToken>,
    cut: std::sync::atomic::AtomicBool,
    /// Black-holed: connections stay open but no byte moves either way, as on a network that drops
    /// packets; nobody on either side gets an error.
    stalled: std::sync::atomic::AtomicBool,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            generation: Mutex::new(CancellationToken::new()),
            cut: false.into(),
            stalled: false.into(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, upstream, state.clone(), stop.clone()));
        Self { port, state, stop }
    }

    /// Closes every open connection and closes new ones as soon as they are accepted, as a
    /// database server that went away would.
    pub fn cut(&self) {
        self.state
            .cut
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.end_forwarding();
    }

    /// Stops the forwarding of every connection opened so far.
    fn end_forwarding(&self) {
        let mut generation = self
            .state
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Black-holes the proxy: open connections stop forwarding but stay open, and new ones are
    /// accepted and held without a byte forwarded, until the proxy is dropped.
    pub fn stall(&self) {
        self.state
            .stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.end_forwarding();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state
            .cut
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.state
            .stalled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        if state.cut.load(std::sync::atomic::Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        if state.stalled.load(std::sync::atomic::Ordering::SeqCst) {
            let stop = stop.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                drop(inbound);
            });
            continue;
        }
        let generation = state
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                () = generation.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
            }
            if state.stalled.load(std::sync::atomic::Ordering::SeqCst) {
                // Held open, silent, until the proxy goes away.
                stop.cancelled().await;
            }
        });
    }
}

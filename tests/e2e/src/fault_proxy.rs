//! A TCP proxy on loopback that fails on command, to put in front of a simulator or a
//! real proxy server: it passes bytes through, stalls, refuses, or cuts a connection
//! after a number of bytes of answer — the ways networks fail halfway through a cycle.
//!
//! The mode applies to connections accepted after it is set, except a cut armed with
//! [`FaultProxy::cut_after`], which hits the first connection that carries the given
//! number of answer bytes from then on (so it lands in the middle of an answer), once,
//! and [`FaultProxy::hang`], which stalls the connections already open too (a server
//! that stops answering in the middle of a cycle, kept-alive connections included).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Pass,
    /// Reads what the client sends and never answers nor connects upstream.
    Stall,
    /// Closes the connection at once.
    Refuse,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    /// Open connections forward nothing while set ([`FaultProxy::hang`]).
    frozen: std::sync::atomic::AtomicBool,
    /// Answer bytes still allowed before the armed cut; `u64::MAX`: none armed.
    cut_budget: AtomicU64,
    accepted: AtomicU64,
    open: AtomicU64,
    cuts: AtomicU64,
    forwarded: AtomicU64,
    /// Offsets (in forwarded answer bytes) of reads that began with `HTTP/`: where
    /// answers start, so a test can aim a cut at one.
    starts: Mutex<Vec<(u64, String)>>,
}

/// A running fault proxy. Dropping it stops accepting; open connections end with it.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.context("fault proxy: bind")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(Mode::Pass),
            frozen: std::sync::atomic::AtomicBool::new(false),
            cut_budget: AtomicU64::new(u64::MAX),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            starts: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The mode of new connections; [`Mode::Pass`] also lets connections stalled by
    /// [`FaultProxy::hang`] forward again.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
        if mode == Mode::Pass {
            self.shared.frozen.store(false, Ordering::SeqCst);
        }
    }

    /// Stops answering at once: new connections stall, and the open ones forward
    /// nothing more either way.
    pub fn hang(&self) {
        self.set_mode(Mode::Stall);
        self.shared.frozen.store(true, Ordering::SeqCst);
    }

    /// Cuts the connection that carries the `bytes`-th answer byte from now on (both
    /// directions closed at once, mid-answer), then passes everything again.
    pub fn cut_after(&self, bytes: u64) {
        self.shared.cut_budget.store(bytes, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections cut by [`FaultProxy::cut_after`].
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Answer bytes forwarded to clients so far.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Where answers began, in forwarded bytes, with their status line: an answer
    /// arrives in one read when the upstream writes it at once, as the simulators do.
    pub fn answer_starts(&self) -> Vec<(u64, String)> {
        self.shared.starts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until no connection is open; false if that takes longer than `limit`.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.open() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let mode = *shared.mode.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.open.fetch_add(1, Ordering::SeqCst);
            match mode {
                Mode::Refuse => drop(client),
                Mode::Stall => stall(client).await,
                Mode::Pass => pass(client, &shared).await,
            }
            shared.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Reads and discards until the client gives up.
async fn stall(mut client: TcpStream) {
    let mut buffer = [0u8; 4096];
    while matches!(client.read(&mut buffer).await, Ok(n) if n > 0) {}
}

/// Returns once the proxy is not hung ([`FaultProxy::hang`]).
async fn wait_while_frozen(shared: &Shared) {
    while shared.frozen.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn pass(client: TcpStream, shared: &Shared) {
    let Ok(server) = TcpStream::connect(shared.upstream).await else { return };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upload = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            wait_while_frozen(shared).await;
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let download = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Take up to `n` from the armed budget; if it runs out inside this chunk,
            // forward only up to that byte and cut.
            let budget = shared.cut_budget.load(Ordering::SeqCst);
            if budget != u64::MAX {
                let allowed = budget.min(n as u64) as usize;
                if allowed < n
                    && shared.cut_budget.compare_exchange(budget, u64::MAX, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                {
                    let _ = client_write.write_all(&buffer[..allowed]).await;
                    shared.forwarded.fetch_add(allowed as u64, Ordering::SeqCst);
                    shared.cuts.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
                let _ = shared.cut_budget.compare_exchange(
                    budget,
                    budget - allowed as u64,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
            wait_while_frozen(shared).await;
            if buffer[..n].starts_with(b"HTTP/") {
                let line = String::from_utf8_lossy(&buffer[..n]).lines().next().unwrap_or_default().to_owned();
                let at = shared.forwarded.load(Ordering::SeqCst);
                shared.starts.lock().unwrap_or_else(PoisonError::into_inner).push((at, line));
            }
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
            shared.forwarded.fetch_add(n as u64, Ordering::SeqCst);
        }
        let _ = client_write.shutdown().await;
        false
    };
    // A cut ends both directions at once; otherwise the answer side ending ends the
    // connection too (the client may keep its side open for keep-alive).
    tokio::select! {
        _ = download => {}
        _ = async { upload.await; std::future::pending::<()>().await } => {}
    }
}

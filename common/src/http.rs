//! A minimal HTTP/1.1 endpoint for probes and Prometheus: `GET /healthz`, `GET /readyz`,
//! `GET /metrics`. One request per connection; nothing else is served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// Liveness and readiness as the program reports them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the program ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Binds `addr` and serves the endpoints until the task is dropped. Returns the bound
/// address (useful with port 0).
pub async fn serve_ops(
    addr: SocketAddr,
    health: Arc<Health>,
    registry: Arc<Mutex<Registry>>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let health = Arc::clone(&health);
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let _ = answer(stream, &health, &registry).await;
            });
        }
    });
    Ok((bound, task))
}

async fn answer(
    mut stream: TcpStream,
    health: &Health,
    registry: &Mutex<Registry>,
) -> std::io::Result<()> {
    // Read until the end of the request head (a request may arrive in pieces), at most
    // 4 KiB and 5 seconds.
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 4096 {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
    let request = String::from_utf8_lossy(&buf);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (request.starts_with("GET "), path) {
        (true, "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        (true, "/readyz") if health.is_ready() => ("200 OK", "text/plain", "ok\n".to_string()),
        (true, "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".to_string(),
        ),
        (true, "/metrics") => {
            let mut text = String::new();
            let encoded =
                prometheus_client::encoding::text::encode(&mut text, &*registry.lock().await);
            match encoded {
                Ok(()) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => (
                    "500 Internal Server Error",
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

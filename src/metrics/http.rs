//! The `/metrics` endpoint: a tiny blocking HTTP/1.1 server on its own thread that merges the shard
//! registries on each scrape. Also `/health` (200 while the process runs).
//!
//! Guarantee: it never touches the message path; a slow or malicious client only delays scrapes
//! (each connection has a 5 s read/write timeout and requests are capped at 8 KiB).
//! Precondition: bind address from config; loopback by default.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};

/// Binds and serves on a background thread. Returns the bound address (port 0 picks one).
pub fn serve(addr: SocketAddr, registries: Vec<Registry>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("shardline-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = handle(stream, &registries) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
        })?;
    Ok(local)
}

fn handle(mut s: TcpStream, registries: &[Registry]) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 8192];
    let mut len = 0;
    while len < buf.len() {
        let n = s.read(buf.get_mut(len..).unwrap_or_default())?;
        if n == 0 {
            break;
        }
        len += n;
        if buf
            .get(..len)
            .is_some_and(|b| b.windows(4).any(|w| w == b"\r\n\r\n"))
        {
            break;
        }
    }
    let req = String::from_utf8_lossy(buf.get(..len).unwrap_or_default());
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = match path {
        "/metrics" => {
            let fams = super::gather(registries);
            let mut out = Vec::new();
            match TextEncoder::new().encode(&fams, &mut out) {
                Ok(()) => ("200 OK", "text/plain; version=0.0.4", out),
                Err(e) => (
                    "500 Internal Server Error",
                    "text/plain",
                    e.to_string().into_bytes(),
                ),
            }
        }
        "/health" => ("200 OK", "text/plain", b"ok\n".to_vec()),
        _ => ("404 Not Found", "text/plain", b"try /metrics\n".to_vec()),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(&body)
}

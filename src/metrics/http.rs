//! The `/metrics` and `/health` endpoints: hyper (HTTP/1.1) on a current-thread tokio runtime on a
//! thread of its own, one task per connection, merging the shard registries on each request.
//!
//! Guarantee: never touches the message path (it only reads the shard registries). One slow client
//! cannot hold the endpoint: every connection is its own task, a request's headers must arrive within
//! [`HEADER_TIMEOUT`] and a connection lives at most [`CONNECTION_LIFETIME`], and at most
//! [`MAX_CONNECTIONS`] are open at once (further ones are closed at accept), so misbehaving clients cost
//! bounded memory and never delay another client's scrape.
//!
//! `/health` answers 200 `ok`, or 503 with one line per unhealthy shard (see [`health`]); the lines
//! carry shard numbers and ages only, never error messages or record values.
//! Precondition: bind address from config; loopback by default.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Registry, TextEncoder};

/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection stays open, keep-alive included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Open connections at most; a scraper needs one.
pub const MAX_CONNECTIONS: usize = 64;

/// A shard with work pending (writes in flight, or a record not yet committable) that finished no
/// record for this long is stuck, as is a shard whose oldest pending record has waited this long.
/// Well above the 5 s cap of a retry backoff and a usual 15-30 s scrape interval, so one failed
/// retry or a brief database hiccup does not flap it; a database outage of this length does turn it
/// unhealthy, which is the point: no progress with work pending.
pub const STALL_AFTER_S: f64 = 60.0;

/// Binds and serves on a background thread. Returns the bound address (port 0 picks one).
pub fn serve(addr: SocketAddr, registries: Vec<Registry>) -> std::io::Result<SocketAddr> {
    // Binding here keeps the OS error (address in use, permission) as an io::Error for the caller.
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let registries: Arc<[Registry]> = registries.into();
    std::thread::Builder::new()
        .name("shardline-metrics".into())
        .spawn(move || {
            if let Err(e) = runtime.block_on(accept_loop(listener, registries)) {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        })?;
    Ok(local)
}

async fn accept_loop(listener: TcpListener, registries: Arc<[Registry]>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (open, registries) = (open.clone(), registries.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let reply = route(req.uri().path(), &registries, crate::clock::unix_seconds());
                std::future::ready(Ok::<_, Infallible>(response(reply)))
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                tracing::debug!(error = %e, "metrics connection failed");
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn response(reply: Reply) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(reply.body)));
    *r.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(reply.content_type),
    );
    r
}

/// One response, before it meets the socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

fn text(status: u16, body: impl Into<Vec<u8>>) -> Reply {
    Reply {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
    }
}

/// Answers `url` (path and optional query) from the registries at Unix time `now_unix_s`.
fn route(url: &str, registries: &[Registry], now_unix_s: f64) -> Reply {
    let path = url.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => {
            let fams = super::gather(registries);
            let mut out = Vec::new();
            match TextEncoder::new().encode(&fams, &mut out) {
                Ok(()) => Reply {
                    status: 200,
                    content_type: "text/plain; version=0.0.4",
                    body: out,
                },
                Err(e) => text(500, format!("{e}\n")),
            }
        }
        "/health" => match health(&super::gather(registries), now_unix_s) {
            Ok(()) => text(200, "ok\n"),
            Err(reasons) => text(503, reasons.join("\n") + "\n"),
        },
        _ => text(404, "try /metrics or /health\n"),
    }
}

/// What `/health` reads of one shard, from its own gauges.
#[derive(Debug, Default)]
struct ShardHealth {
    failed: f64,
    in_flight: f64,
    oldest_pending_s: f64,
    first_record_time: f64,
    last_done_time: f64,
}

/// Health from the merged shard families: `Err` holds one line per unhealthy shard, ordered by shard.
///
/// A shard is unhealthy when `shardline_shard_failed` is 1 (it hit a fatal error and stops), or when
/// it is stuck: it has work pending (a positive `shardline_in_flight_writes` or
/// `shardline_oldest_pending_seconds`) and finished no record for [`STALL_AFTER_S`] (going by
/// `shardline_last_done_time_seconds`, or its first record when none finished yet), or its oldest
/// pending record has waited that long. An idle shard (nothing pending) is healthy however long ago
/// it last worked. Pure: reads only `families` and `now_unix_s`.
pub fn health(families: &[MetricFamily], now_unix_s: f64) -> Result<(), Vec<String>> {
    let mut shards: BTreeMap<(usize, String), ShardHealth> = BTreeMap::new();
    for fam in families {
        let name = fam.name();
        if !matches!(
            name,
            "shardline_shard_failed"
                | "shardline_in_flight_writes"
                | "shardline_oldest_pending_seconds"
                | "shardline_first_record_time_seconds"
                | "shardline_last_done_time_seconds"
        ) {
            continue;
        }
        for m in fam.get_metric() {
            let Some(shard) = m.get_label().iter().find(|l| l.name() == "shard") else {
                continue;
            };
            // Numeric order first (shard 10 after shard 9), the label itself as the tie-breaker.
            let key = (
                shard.value().parse().unwrap_or(usize::MAX),
                shard.value().to_string(),
            );
            let h = shards.entry(key).or_default();
            let v = m.get_gauge().get_value();
            match name {
                "shardline_shard_failed" => h.failed = v,
                "shardline_in_flight_writes" => h.in_flight = v,
                "shardline_oldest_pending_seconds" => h.oldest_pending_s = v,
                "shardline_first_record_time_seconds" => h.first_record_time = v,
                _ => h.last_done_time = v,
            }
        }
    }
    let mut reasons = Vec::new();
    for ((_, shard), h) in &shards {
        if h.failed >= 1.0 {
            reasons.push(format!("shard {shard}: failed (fatal error, stopped)"));
            continue;
        }
        let pending = h.in_flight > 0.0 || h.oldest_pending_s > 0.0;
        let progress_at = h.last_done_time.max(h.first_record_time);
        let idle_s = now_unix_s - progress_at;
        if pending && progress_at > 0.0 && idle_s > STALL_AFTER_S {
            reasons.push(format!(
                "shard {shard}: stuck: {} writes in flight, no record finished for {idle_s:.0} s",
                h.in_flight
            ));
        } else if h.oldest_pending_s > STALL_AFTER_S {
            reasons.push(format!(
                "shard {shard}: stuck: oldest pending record waited {:.0} s",
                h.oldest_pending_s
            ));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;
    use crate::metrics::{gather, ShardMetrics};

    const NOW: f64 = 1_700_000_000.0;

    fn families(shards: &[&ShardMetrics]) -> Vec<MetricFamily> {
        let regs: Vec<Registry> = shards.iter().map(|m| m.registry.clone()).collect();
        gather(&regs)
    }

    #[test]
    fn idle_and_progressing_shards_are_healthy() {
        let idle = ShardMetrics::new(0);
        idle.last_done_time.set(NOW - 3600.0);
        let busy = ShardMetrics::new(1);
        busy.first_record_time.set(NOW - 3600.0);
        busy.in_flight.set(50);
        busy.oldest_pending_seconds.set(0.2);
        busy.last_done_time.set(NOW - 1.0);
        let fresh = ShardMetrics::new(2);
        assert_eq!(health(&families(&[&idle, &busy, &fresh]), NOW), Ok(()));
    }

    #[test]
    fn a_failed_shard_is_unhealthy() {
        let ok = ShardMetrics::new(0);
        let failed = ShardMetrics::new(1);
        crate::metrics::events::shard_failed(&failed, &"test");
        let reasons = health(&families(&[&ok, &failed]), NOW).expect_err("unhealthy");
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("shard 1: failed"), "{reasons:?}");
    }

    #[test]
    fn work_pending_without_progress_is_stuck() {
        let stalled = ShardMetrics::new(3);
        stalled.first_record_time.set(NOW - 600.0);
        stalled.last_done_time.set(NOW - STALL_AFTER_S - 5.0);
        stalled.in_flight.set(7);
        let never_done = ShardMetrics::new(10);
        never_done.first_record_time.set(NOW - STALL_AFTER_S - 5.0);
        never_done.in_flight.set(1);
        let reasons = health(&families(&[&never_done, &stalled]), NOW).expect_err("unhealthy");
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].starts_with("shard 3: stuck: 7 writes"),
            "{reasons:?}"
        );
        assert!(reasons[1].starts_with("shard 10: stuck"), "{reasons:?}");
        // Just under the threshold: still healthy.
        stalled.last_done_time.set(NOW - STALL_AFTER_S + 5.0);
        never_done.last_done_time.set(NOW - 1.0);
        assert_eq!(health(&families(&[&never_done, &stalled]), NOW), Ok(()));
    }

    #[test]
    fn a_record_pending_too_long_is_stuck_even_while_others_finish() {
        let m = ShardMetrics::new(0);
        m.first_record_time.set(NOW - 600.0);
        m.last_done_time.set(NOW - 0.5);
        m.in_flight.set(3);
        m.oldest_pending_seconds.set(STALL_AFTER_S + 1.0);
        let reasons = health(&families(&[&m]), NOW).expect_err("unhealthy");
        assert!(
            reasons[0].starts_with("shard 0: stuck: oldest pending"),
            "{reasons:?}"
        );
    }

    #[test]
    fn routes_metrics_health_and_not_found() {
        let m = ShardMetrics::new(0);
        m.stage("t", "written").inc();
        let regs = vec![m.registry.clone()];
        let r = route("/metrics", &regs, NOW);
        assert_eq!(r.status, 200);
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            body.contains("shardline_messages_total{shard=\"0\",stage=\"written\",topic=\"t\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("shardline_shard_failed{shard=\"0\"} 0"),
            "{body}"
        );
        let r = route("/health?verbose=1", &regs, NOW);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
        assert_eq!(route("/", &regs, NOW).status, 404);
        m.failed.set(1);
        let r = route("/health", &regs, NOW);
        assert_eq!(r.status, 503);
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "shard 0: failed (fatal error, stopped)\n"
        );
    }

    /// Status code and body of one GET over a fresh connection. HTTP/1.0, so the body comes with a
    /// Content-Length (never chunked) and the server closes the connection after it.
    fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).expect("connects");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("sets timeout");
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("sends request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("reads response");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out.as_str(), ""));
        let status = head.split_whitespace().nth(1).unwrap_or_default();
        (status.to_string(), body.to_string())
    }

    #[test]
    fn scrapes_are_answered_while_slow_clients_hold_connections() {
        let m = ShardMetrics::new(0);
        let addr = serve(
            "127.0.0.1:0".parse().expect("address"),
            vec![m.registry.clone()],
        )
        .expect("binds");
        // More stalled clients than workers: one sent half a request, the rest nothing at all.
        let mut slow = Vec::new();
        for i in 0..8 {
            let mut s = TcpStream::connect(addr).expect("connects");
            if i == 0 {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: l")
                    .expect("sends half a request");
            }
            slow.push(s);
        }
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, "200", "{body}");
        assert!(body.contains("shardline_in_flight_writes"), "{body}");
        assert_eq!(
            get(addr, "/health"),
            ("200".to_string(), "ok\n".to_string())
        );
        m.failed.set(1);
        let (status, body) = get(addr, "/health");
        assert_eq!(status, "503", "{body}");
        assert_eq!(body, "shard 0: failed (fatal error, stopped)\n");
        assert_eq!(get(addr, "/nope").0, "404");
        drop(slow);
    }
}

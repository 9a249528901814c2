//! The HTTP endpoint beside the daemon's sockets: Prometheus metrics, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::service::metrics::Metrics;
use crate::service::Service;

/// Refuses addresses other hosts could reach: the metrics expose operational data.
pub fn check_addr(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "--metrics-addr {addr} is not a loopback address; metrics expose operational data, \
             so serve them on 127.0.0.1 or [::1] (and put a proxy in front if needed)"
        ))
    }
}

const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

/// Answers scrapes and probes until `token` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    service: Arc<Service>,
    token: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the limit the connection is simply closed.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (metrics, service) = (metrics.clone(), service.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HEAD_TIMEOUT, answer(stream, &metrics, &service)).await;
            drop(slot);
        });
    }
}

/// What a scrape reads of each model.
fn model_states(service: &Service) -> Vec<crate::service::metrics::ModelState> {
    service
        .models()
        .iter()
        .map(|m| crate::service::metrics::ModelState {
            labels: m.labels(),
            stats: m.queue.stats(),
            ready: m.queue.unhealthy().is_none(),
        })
        .collect()
}

/// `/readyz`: 200 when every model is ready, else 503 naming those that are not;
/// `/readyz?model=NAME`: that one model's readiness (404 for a name not served).
fn readyz(service: &Service, query: &str) -> (u16, &'static str, String) {
    let unhealthy = service.unhealthy();
    let started = service.started();
    let named = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("model="))
        .filter(|n| !n.is_empty());
    if let Some(name) = named {
        if !service.models().iter().any(|m| m.identity.name == name) {
            return (404, "text/plain", format!("no model named {name:?}\n"));
        }
        return match unhealthy.iter().find(|(n, _)| n == name) {
            _ if !started => (503, "text/plain", "not ready\n".to_string()),
            Some((_, why)) => (503, "text/plain", format!("not ready: {name}: {why}\n")),
            None => (200, "text/plain", "ready\n".to_string()),
        };
    }
    if !started {
        return (503, "text/plain", "not ready\n".to_string());
    }
    match Service::unhealthy_line(&unhealthy) {
        None => (200, "text/plain", "ready\n".to_string()),
        Some(line) => (503, "text/plain", format!("not ready: {line}\n")),
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    service: &Service,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break false;
        }
        head.extend_from_slice(&buf[..n]);
    };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    let (path, query) = match target.map(|t| t.split_once('?').unwrap_or((t, ""))) {
        Some((p, q)) => (Some(p), q),
        None => (None, ""),
    };
    let (code, ctype, body) = match (complete, method, path) {
        (false, ..) => (400, "text/plain", "bad request\n".to_string()),
        (true, Some("GET"), Some("/metrics")) => {
            (200, "text/plain; version=0.0.4; charset=utf-8", {
                metrics.render(model_states(service))
            })
        }
        (true, Some("GET"), Some("/healthz")) => (200, "text/plain", "ok\n".to_string()),
        (true, Some("GET"), Some("/readyz")) => readyz(service, query),
        (true, Some("GET"), _) => (404, "text/plain", "not found\n".to_string()),
        _ => (405, "text/plain", "method not allowed\n".to_string()),
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

//! The accept loop: hyper's HTTP/1 connections under a cap, with a head timeout.
//!
//! Over `max_connections`, new connections wait in the listener's backlog (the kernel's accept
//! queue) until one closes: nothing is refused, and half-sent or idle connections free their
//! slots when `header_timeout` runs out. hyper starts that timeout whenever it waits for a
//! request head, on a new connection and between requests on a kept-alive one, and never while
//! a request is being answered, so a long generation or a stream is not cut.
//!
//! When `stop` turns true the loop stops accepting (the listener closes), idle connections
//! close, and it returns once the requests in flight have been answered.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::ServerOptions;

/// hyper refuses a head over `max_header_bytes` × this itself, with a bodyless 431, before any
/// of it reaches the server's code; heads between the limit and that get the JSON 431 of
/// `guard::check_head`. The margin bounds what a connection may buffer.
pub(super) const HEAD_PARSE_FACTOR: usize = 4;

/// Accepts connections, each served on its own task, until `stop` turns true (then waits for
/// every connection to finish) or the future is dropped.
pub(super) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    opts: &ServerOptions,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // At most u32::MAX, so that draining can take every slot back at once.
    let cap = opts
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(cap));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_header_size(opts.max_header_bytes.saturating_mul(HEAD_PARSE_FACTOR));
    loop {
        // Taken before accepting: over the cap, connections wait in the backlog.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return Ok(()),
            },
            _ = stopped(&mut stop) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: give connections time to close.
                log::error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Streamed tokens are small writes: send each at once.
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped(&mut stop) => {
                    // Closes the connection once the request in flight (if any) is answered.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                log::debug!("connection closed: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Every slot back: every connection has closed.
    let _ = slots
        .acquire_many(u32::try_from(cap).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

/// Errors that end one half-accepted connection, not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

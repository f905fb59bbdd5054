//! The accept loop: hyper's HTTP/1 connections under a cap, with a head timeout.
//!
//! Over `max_connections`, new connections wait in the listener's backlog (the kernel's accept
//! queue) until one closes: nothing is refused, and half-sent or idle connections free their
//! slots when `header_timeout` runs out. hyper starts that timeout whenever it waits for a
//! request head, on a new connection and between requests on a kept-alive one, and never while
//! a request is being answered, so a long generation or a stream is not cut.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::ServerOptions;

/// hyper refuses a head over `max_header_bytes` × this itself, with a bodyless 431, before any
/// of it reaches the server's code; heads between the limit and that get the JSON 431 of
/// `guard::check_head`. The margin bounds what a connection may buffer.
pub(super) const HEAD_PARSE_FACTOR: usize = 4;

/// Accepts connections, each served on its own task, until the future is dropped.
pub(super) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    opts: &ServerOptions,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_header_size(opts.max_header_bytes.saturating_mul(HEAD_PARSE_FACTOR));
    loop {
        // Taken before accepting: over the cap, connections wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let stream = match listener.accept().await {
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
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("connection closed: {e}");
            }
            drop(slot);
        });
    }
}

/// Errors that end one half-accepted connection, not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

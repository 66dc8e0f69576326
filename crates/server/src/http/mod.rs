//! Serving HTTP/1.1: hyper's connections with bounded read times, and graceful shutdown.
//!
//! `axum::serve` gives a connection all the time it wants: a client that sends nothing, half
//! its headers or half its body held a connection (and a task) for as long as it liked, and
//! held a graceful shutdown too. Here each connection is hyper's HTTP/1 connection with
//! a timer:
//!
//! - **headers** must arrive within [`HttpConfig::header_read_timeout`] of the connection
//!   opening, or of the previous response on a kept-alive connection (hyper's
//!   `header_read_timeout`, which starts before the first byte); then the connection is
//!   closed, with no answer (there is no request to answer);
//! - **a body** must arrive whole within [`HttpConfig::body_read_timeout`] of its headers
//!   ([`DeadlineBody`]): a total, not a wait per read, so a client trickling a byte at a
//!   time is cut off too. The handler reading it answers 408, and the connection closes
//!   (its body was not read to the end). A handler that never reads its body answers at
//!   once, and hyper closes the connection rather than read the rest.
//!
//! On shutdown the listener closes, idle connections close, requests in flight finish (each
//! bounded by the two timeouts while it is being read), and [`serve`] returns when the last
//! connection has ended.
//!
//! Only HTTP/1 is served, as before (axum was built without `http2`).

mod body;

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

pub use body::{BodyTimeout, DeadlineBody};

use tokio::sync::{mpsc, watch};

use crate::config::HttpConfig;

/// How long accepting pauses after an error that is not the client's (out of file
/// descriptors, say), so a persistent one does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` with the read bounds of `config` until `shutdown` resolves,
/// then lets the requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let body_read_timeout = config.body_read_timeout;
    let service = router.map_request(move |request: hyper::Request<Incoming>| {
        request.map(|body| DeadlineBody::new(body, body_read_timeout))
    });
    // hyper-util's `GracefulShutdown` cannot watch a connection with upgrades (which the
    // live call feed's WebSocket needs), so the same is done here: a stop signal every
    // connection watches, and a channel whose senders, one per connection, are all gone
    // once every connection has finished.
    let (stop, stopping) = watch::channel(false);
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // The client gave up before it was accepted: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Upgrades on: the live call feed's WebSocket is an HTTP/1.1 upgrade. Once upgraded,
        // the connection is the socket's, and a shutdown no longer waits for it.
        let connection = builder
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            )
            .with_upgrades();
        let mut stopping = stopping.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                // `changed` rather than `wait_for`, whose guard may not cross an await.
                _ = async { while !*stopping.borrow_and_update() { if stopping.changed().await.is_err() { break; } } } => {
                    // The request in flight finishes; no other is read.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // A timed-out, reset or malformed connection is the client's business.
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stop.send_replace(true);
    drop(alive);
    // `None` once every connection's sender is gone: all have finished.
    let _ = all_done.recv().await;
    Ok(())
}

/// Errors of one connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

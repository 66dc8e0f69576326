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
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

pub use body::{BodyTimeout, DeadlineBody};

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
    let graceful = GracefulShutdown::new();
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
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A timed-out, reset or malformed connection is the client's business.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
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

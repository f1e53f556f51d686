//! The HTTP/1.1 server loop: what `axum::serve` does (a task per connection, the peer's
//! address as `ConnectInfo`, graceful shutdown), plus a limit on how long a client may take
//! to send a request's headers. `axum::serve` gives hyper no timer, so a connection that
//! opens and never finishes its request line and headers (or sends nothing) was held
//! forever; enough of them exhaust the process's file descriptors.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets each
/// connection finish the request it is in, and returns once all are closed.
///
/// `header_timeout` is how long a client has to send a request's line and headers, counted
/// from when the server starts waiting for them: on a kept-alive connection from the previous
/// answer, so it is also how long an idle connection stays open. It must outlast the idle
/// timeout of a load balancer in front (AWS ALB 60 s, nginx `keepalive_timeout` 75 s), or the
/// balancer may reuse a connection the gateway is closing.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = router
            .clone()
            .map_request(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            });
        let connection = graceful.watch(
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
        );
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A failed accept: a connection that went away first is nothing; anything else (out of
/// file descriptors) is logged and accepting pauses for a second, as `axum::serve` does.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "Accepting a connection failed; pausing for a second.");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

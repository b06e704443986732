//! The accept loop. axum's own `serve` cannot close a connection without answering, which the
//! `drop_connection` fault needs, so each connection gets a `ConnectionKill` that its handler may
//! fire, and the connection future is dropped (closing the socket) when it fires.

use axum::Router;
use axum::extract::Extension;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::routes::ConnectionKill;

pub async fn accept_loop(listener: TcpListener, app: Router) {
    // Owning the connections here means aborting this task closes all of them.
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let kill = ConnectionKill::default();
        let service = TowerToHyperService::new(app.clone().layer(Extension(kill.clone())));
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = kill.0.notified() => {}
            }
        });
    }
}

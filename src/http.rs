//! The process's small HTTP server: `/healthz`, `/readyz` and `/metrics`
//! (see [`crate::health`] for what the first two mean).
//!
//! - `GET /healthz`: 200 with `{"ok":true,"checks":[…]}` while live, 503
//!   with the same shape (failing checks have `"ok":false` and a
//!   `detail`) when not.
//! - `GET /readyz`: the same for readiness.
//! - `GET /metrics`: Prometheus text exposition (format 0.0.4) of every
//!   OpenTelemetry instrument of the process; 404 when no Prometheus
//!   reader was installed.

use crate::health::{Health, Report};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::future::Future;
use tokio::net::TcpListener;

/// The media type of Prometheus text exposition 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes, on `health`.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// Serves [`router`] on `listener` until `stop` resolves; requests in
/// flight then finish.
///
/// # Errors
/// The listener failed (accept errors on single connections are retried
/// by axum and do not end it).
pub async fn serve(
    listener: TcpListener,
    health: Health,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health))
        .with_graceful_shutdown(stop)
        .await
}

fn report(r: Report) -> Response {
    let status = if r.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

async fn healthz(State(h): State<Health>) -> Response {
    report(h.liveness())
}

async fn readyz(State(h): State<Health>) -> Response {
    report(h.readiness())
}

async fn metrics() -> Response {
    match crate::metrics::installed().and_then(|i| i.prometheus_text()) {
        Some(text) => ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are off: no Prometheus reader installed\n",
        )
            .into_response(),
    }
}

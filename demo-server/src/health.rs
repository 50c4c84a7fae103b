//! Liveness and readiness (`GET /healthz`, `GET /readyz`).
//!
//! `/healthz` answers `200` while the process serves HTTP: restart it when it does not. `/readyz` answers `200`
//! only when the server can do its work — the store commits a write, every configured dependency answers (Redis and
//! PostgreSQL register a [`ReadinessCheck`] when they are configured), no push provider is stopped by a
//! configuration error — and `503` otherwise or while the server shuts down; each check says in the JSON body what
//! is wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::node::Node;
use crate::store::BoxFuture;

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The result of one readiness check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckOutcome {
    /// Whether the dependency can do its part now.
    pub ok: bool,
    /// What the check found (for people and dashboards): an object; on failure it has an `error` member saying
    /// what is wrong.
    pub detail: Value,
}

impl CheckOutcome {
    /// A passing check with `detail` (an object).
    pub fn ok(detail: Value) -> Self {
        CheckOutcome { ok: true, detail }
    }

    /// A failing check: `error` says what is wrong.
    pub fn failed(error: impl Into<String>) -> Self {
        CheckOutcome { ok: false, detail: json!({ "error": error.into() }) }
    }
}

/// A dependency `GET /readyz` checks (registered with `RunningServer::add_readiness_check`; the store and the
/// push providers are built in).
pub trait ReadinessCheck: Send + Sync + 'static {
    /// The check's name in the body (`redis`, `postgres`, …).
    fn name(&self) -> &'static str;

    /// Checks the dependency now; it is cut after [`CHECK_TIMEOUT`].
    fn check(&self) -> BoxFuture<'_, CheckOutcome>;
}

/// `GET /healthz`: the process is alive.
pub(crate) fn liveness(node: &Node) -> Value {
    json!({
        "status": "alive",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": node.started.elapsed().as_secs(),
    })
}

/// `GET /readyz`: whether the server is ready, and the body that says why (not).
pub(crate) async fn readiness(node: &Arc<Node>) -> (bool, Value) {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    let store = timed(store_check(node)).await;
    ready &= store.ok;
    checks.insert("store".into(), body(store));
    let push = push_check(node);
    ready &= push.ok;
    checks.insert("push".into(), body(push));
    let registered: Vec<Arc<dyn ReadinessCheck>> = node.readiness_checks();
    let outcomes = futures_util::future::join_all(registered.iter().map(|c| timed(c.check()))).await;
    for (check, outcome) in registered.iter().zip(outcomes) {
        ready &= outcome.ok;
        checks.insert(check.name().into(), body(outcome));
    }
    let shutting_down = node.is_shutting_down();
    let status = if shutting_down {
        "shutting_down"
    } else if ready {
        "ready"
    } else {
        "not_ready"
    };
    (ready && !shutting_down, json!({ "status": status, "checks": checks }))
}

fn body(outcome: CheckOutcome) -> Value {
    let mut detail = match outcome.detail {
        Value::Object(map) => map,
        other => {
            let mut map = serde_json::Map::new();
            map.insert("detail".into(), other);
            map
        }
    };
    detail.insert("ok".into(), Value::Bool(outcome.ok));
    Value::Object(detail)
}

/// Runs a check within [`CHECK_TIMEOUT`].
async fn timed(check: impl Future<Output = CheckOutcome>) -> CheckOutcome {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(outcome) => outcome,
        Err(_) => CheckOutcome::failed(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
    }
}

/// The store commits a small write through the path publishes take.
async fn store_check(node: &Node) -> CheckOutcome {
    let started = Instant::now();
    let kind = node.stores.streams.kind();
    match node.stores.streams.check_writable().await {
        Ok(()) => CheckOutcome::ok(json!({ "kind": kind, "write_ms": started.elapsed().as_secs_f64() * 1000.0 })),
        Err(e) => {
            let mut outcome = CheckOutcome::failed(format!("the store cannot commit: {e}"));
            outcome.detail["kind"] = json!(kind);
            outcome
        }
    }
}

/// No configured push provider is stopped by a configuration error.
fn push_check(node: &Node) -> CheckOutcome {
    let Some(dispatcher) = &node.routing.dispatcher else {
        return CheckOutcome::ok(json!({ "providers": {} }));
    };
    let mut providers = serde_json::Map::new();
    let mut stopped = Vec::new();
    for h in dispatcher.health().into_iter().filter(|h| h.configured) {
        if let Some(reason) = &h.stopped {
            stopped.push(format!("{}: {reason}", h.provider.as_str()));
        }
        providers.insert(
            h.provider.as_str().into(),
            json!({ "stopped": h.stopped, "deletions_paused": h.deletions_paused }),
        );
    }
    if stopped.is_empty() {
        CheckOutcome::ok(json!({ "providers": providers }))
    } else {
        let mut outcome = CheckOutcome::failed(format!(
            "push stopped by a configuration error ({}); fix the configuration and restart the server",
            stopped.join("; ")
        ));
        outcome.detail["providers"] = Value::Object(providers);
        outcome
    }
}

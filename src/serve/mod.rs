//! `saerl serve`: a read-only web application over the lake. Every page is server-rendered
//! HTML with a JSON twin under `/api` (same path, same data), so scripts and notebooks can read
//! what a researcher sees. The server writes nothing: each statement takes the lake's shared
//! lock and sees the lake as last committed, like every reader.
//!
//! - `/` the study: every chain × layer × k with its stages and transitions;
//! - `/chain/{c}/layer/{l}/k/{k}/transition/{a}/{b}`: drift histograms, the encoder × decoder
//!   scatter with its median quadrants, the most-drifted features, births and deaths;
//! - `/chain/{c}/layer/{l}/k/{k}/feature/{i}`: one feature along the chain;
//! - `/search`: jump to a feature, or find features by a token of their top examples;
//! - `/sql`: one read-only statement, bounded in rows and time.
//!
//! Bound to 127.0.0.1 by default; any other address needs a token, and a token given is always
//! required (`Authorization: Bearer T`, or `?token=T` once in a browser, which sets a cookie).

mod data;
pub mod flight;
mod html;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use datafusion::prelude::SessionContext;
use serde_json::Value;

use crate::lake::Lake;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The web pages' address (None: Flight SQL alone).
    pub bind: Option<SocketAddr>,
    /// The Flight SQL endpoint's address, if any.
    pub flight: Option<SocketAddr>,
    /// What runs the statements instead of the server (a cluster), if anything.
    pub engine: Option<Arc<dyn crate::sql::session::Engine>>,
    /// Bytes every statement of the server together may hold (None: no limit).
    pub memory_limit: Option<usize>,
    pub token: Option<String>,
    /// Rows the SQL box returns at most.
    pub sql_rows: usize,
    /// Time a SQL box statement may run.
    pub sql_timeout: Duration,
}

/// What every request shares: the lake's session (statements run one at a time, each on the
/// lake as last committed) and the settings.
pub(crate) struct App {
    ctx: tokio::sync::Mutex<SessionContext>,
    lake: Lake,
    cfg: ServeConfig,
}

/// A request's failure, as a page or as JSON.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The address names nothing; the text says what exists.
    NotFound(String),
    BadRequest(String),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Internal(e)
    }
}

impl Failure {
    fn status_and_text(&self) -> (StatusCode, String) {
        match self {
            Failure::NotFound(t) => (StatusCode::NOT_FOUND, t.clone()),
            Failure::BadRequest(t) => (StatusCode::BAD_REQUEST, t.clone()),
            Failure::Internal(e) => (StatusCode::INTERNAL_SERVER_ERROR, crate::error_text(e)),
        }
    }
}

/// Whether a route answers with a page or its JSON twin.
#[derive(Clone, Copy)]
enum Twin {
    Page,
    Api,
}

fn respond(twin: Twin, result: Result<Value, Failure>, render: fn(&Value) -> String) -> Response {
    match (twin, result) {
        (Twin::Api, Ok(v)) => Json(v).into_response(),
        (Twin::Page, Ok(v)) => Html(render(&v)).into_response(),
        (Twin::Api, Err(f)) => {
            let (status, text) = f.status_and_text();
            (status, Json(serde_json::json!({ "error": text }))).into_response()
        }
        (Twin::Page, Err(f)) => {
            let (status, text) = f.status_and_text();
            (status, Html(html::error_page(status.as_u16(), &text))).into_response()
        }
    }
}

/// The loopback rule: a server reachable from elsewhere must ask for a token.
fn check_bind(cfg: &ServeConfig) -> Result<()> {
    for addr in cfg.bind.iter().chain(&cfg.flight) {
        if !addr.ip().is_loopback() && cfg.token.is_none() {
            bail!(
                "refusing to serve the lake on {addr} without a token: pass --token T (or SAERL_TOKEN), or bind 127.0.0.1"
            );
        }
    }
    if cfg.bind.is_none() && cfg.flight.is_none() {
        bail!("nothing to serve: --no-web needs --flight ADDR");
    }
    Ok(())
}

async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Serves until the process is stopped; `ready` is told the bound addresses (web pages, Flight
/// SQL) first.
pub async fn serve(
    lake: &Lake,
    cfg: ServeConfig,
    ready: impl FnOnce(Option<SocketAddr>, Option<SocketAddr>),
) -> Result<()> {
    check_bind(&cfg)?;
    // One runtime, so the pages and every Flight SQL session share one memory pool.
    let runtime = crate::sql::session::limited_runtime_env(lake, cfg.memory_limit)?;
    let flight = match cfg.flight {
        Some(addr) => Some((
            listen(addr).await?,
            flight::FlightSql::new(lake.clone(), cfg.engine.clone(), runtime.clone())?,
        )),
        None => None,
    };
    let web = match cfg.bind {
        Some(addr) => {
            let ctx = crate::sql::session::open(lake, runtime, cfg.engine.as_deref()).await?;
            let app = Arc::new(App {
                ctx: tokio::sync::Mutex::new(ctx),
                lake: lake.clone(),
                cfg: cfg.clone(),
            });
            Some((listen(addr).await?, app))
        }
        None => None,
    };
    ready(
        web.as_ref().map(|w| w.0.local_addr()).transpose()?,
        flight.as_ref().map(|f| f.0.local_addr()).transpose()?,
    );
    let token = cfg.token.clone();
    let web = async move {
        match web {
            Some((listener, app)) => axum::serve(listener, router(app))
                .await
                .context("serving the lake's pages"),
            None => std::future::pending().await,
        }
    };
    let flight = async move {
        match flight {
            Some((listener, service)) => flight::serve(listener, service, token).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = web => r,
        r = flight => r,
    }
}

type S = State<Arc<App>>;
type FeaturePath = Path<(String, i32, i32, i32)>;
type TransitionPath = Path<(String, i32, i32, String, String)>;
type SqlForm = Form<HashMap<String, String>>;

fn router(app: Arc<App>) -> Router {
    const FEATURE: &str = "/chain/{chain}/layer/{layer}/k/{k}/feature/{feature}";
    const TRANSITION: &str = "/chain/{chain}/layer/{layer}/k/{k}/transition/{a}/{b}";
    Router::new()
        .route("/", get(|s: S| study(s, Twin::Page)))
        .route("/api", get(|s: S| study(s, Twin::Api)))
        .route("/api/", get(|s: S| study(s, Twin::Api)))
        .route(
            FEATURE,
            get(|s: S, p: FeaturePath, q: Params| feature(s, p, q, Twin::Page)),
        )
        .route(
            &format!("/api{FEATURE}"),
            get(|s: S, p: FeaturePath, q: Params| feature(s, p, q, Twin::Api)),
        )
        .route(
            TRANSITION,
            get(|s: S, p: TransitionPath| transition(s, p, Twin::Page)),
        )
        .route(
            &format!("/api{TRANSITION}"),
            get(|s: S, p: TransitionPath| transition(s, p, Twin::Api)),
        )
        .route("/search", get(|s: S, q: Params| search(s, q, Twin::Page)))
        .route(
            "/api/search",
            get(|s: S, q: Params| search(s, q, Twin::Api)),
        )
        .route(
            "/sql",
            get(|s: S, q: Params| sql_get(s, q, Twin::Page))
                .post(|s: S, f: SqlForm| sql_post(s, f, Twin::Page)),
        )
        .route(
            "/api/sql",
            get(|s: S, q: Params| sql_get(s, q, Twin::Api))
                .post(|s: S, f: SqlForm| sql_post(s, f, Twin::Api)),
        )
        .fallback(|| async {
            respond(
                Twin::Page,
                Err(Failure::NotFound(
                    "no such page: start at / (the study), /search or /sql".into(),
                )),
                |_| String::new(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_token,
        ))
        .with_state(app)
}

type Params = Query<HashMap<String, String>>;

async fn study(State(app): State<Arc<App>>, twin: Twin) -> Response {
    respond(twin, data::study(&app).await, html::study)
}

async fn feature(
    State(app): State<Arc<App>>,
    Path((chain, layer, k, feature)): Path<(String, i32, i32, i32)>,
    Query(q): Params,
    twin: Twin,
) -> Response {
    let split = q.get("split").map_or("val", String::as_str).to_string();
    respond(
        twin,
        data::feature(&app, &chain, layer, k, feature, &split).await,
        html::feature,
    )
}

async fn transition(
    State(app): State<Arc<App>>,
    Path((chain, layer, k, a, b)): Path<(String, i32, i32, String, String)>,
    twin: Twin,
) -> Response {
    respond(
        twin,
        data::transition(&app, &chain, layer, k, &a, &b).await,
        html::transition,
    )
}

async fn search(State(app): State<Arc<App>>, Query(q): Params, twin: Twin) -> Response {
    // A feature address jumps straight to its page.
    if let (Twin::Page, Some(c), Some(l), Some(k), Some(f)) = (
        twin,
        q.get("chain"),
        q.get("layer"),
        q.get("k"),
        q.get("feature"),
    ) {
        if [l, k, f].iter().all(|v| v.parse::<i32>().is_ok())
            && crate::lake::check_name("chain", c).is_ok()
        {
            return Redirect::to(&format!("/chain/{c}/layer/{l}/k/{k}/feature/{f}"))
                .into_response();
        }
    }
    respond(twin, data::search(&app, &q).await, html::search)
}

async fn sql_get(State(app): State<Arc<App>>, Query(q): Params, twin: Twin) -> Response {
    if q.get("format").map(String::as_str) == Some("csv") {
        return csv(&app, q.get("q").map_or("", String::as_str)).await;
    }
    respond(
        twin,
        data::sql_box(&app, q.get("q").map(String::as_str)).await,
        html::sql,
    )
}

/// The SQL box's rows as a CSV download (errors as the JSON twin gives them).
async fn csv(app: &App, q: &str) -> Response {
    match data::sql_csv(app, q).await {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"saerl.csv\"",
                ),
            ],
            body,
        )
            .into_response(),
        Err(f) => respond(Twin::Api, Err(f), |_| String::new()),
    }
}

async fn sql_post(State(app): State<Arc<App>>, Form(f): SqlForm, twin: Twin) -> Response {
    if f.get("format").map(String::as_str) == Some("csv") {
        return csv(&app, f.get("q").map_or("", String::as_str)).await;
    }
    respond(
        twin,
        data::sql_box(&app, f.get("q").map(String::as_str)).await,
        html::sql,
    )
}

const COOKIE: &str = "saerl_token";

/// Equal in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn presented(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            out.push(t.trim().to_string());
        }
    }
    for v in headers.get_all(header::COOKIE) {
        for part in v.to_str().unwrap_or("").split(';') {
            if let Some(t) = part.trim().strip_prefix(&format!("{COOKIE}=")) {
                out.push(t.to_string());
            }
        }
    }
    out
}

/// The token rule: with a token configured, every request shows it (header or cookie); a
/// browser's `?token=` sets the cookie and is taken out of the address.
async fn require_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(token) = app.cfg.token.as_deref() else {
        return next.run(req).await;
    };
    if presented(req.headers())
        .iter()
        .any(|t| same_secret(t, token))
    {
        return next.run(req).await;
    }
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    if query
        .iter()
        .any(|(k, v)| k == "token" && same_secret(v, token))
    {
        let rest: Vec<(String, String)> = query.into_iter().filter(|(k, _)| k != "token").collect();
        let mut to = req.uri().path().to_string();
        if !rest.is_empty() {
            to.push('?');
            to.push_str(
                &url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(rest)
                    .finish(),
            );
        }
        let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
        return ([(header::SET_COOKIE, cookie)], Redirect::to(&to)).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this saerl server needs its token: open the address with ?token=T once, or send Authorization: Bearer T\n",
    )
        .into_response()
}

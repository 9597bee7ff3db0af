//! The family page: a small, plain, accessible web site where a guardian (or a student of 18)
//! reads the child's plan, decides which agency sees which sections, and sees who has seen
//! what. Served by the plan's home node on its own HTTPS listener (`[family] listen`), with
//! the node's certificate.
//!
//! - `session`: in-memory sessions, cookies and CSRF tokens;
//! - `i18n`: English and Spanish texts, picked from the browser or the switch;
//! - `views`: the HTML templates (maud, escaped) and the style sheet;
//! - `pages`: the handlers, which call [`NodeService`] as the signed-in guardian.
//!
//! *Architecture invariant:* the web layer decides nothing about plans or consent: every
//! read and change goes through `NodeService` with the guardian's `Caller`, so the gate,
//! the signatures and the audit log are exactly those of the gRPC API.
//!
//! *Architecture invariant:* no student data in URLs, page titles or logs. URLs name pages,
//! never plans (forms carry the opaque plan id in their body); titles are fixed texts.
//!
//! Every response carries a strict Content-Security-Policy (`default-src 'none'`, styles from
//! this origin only, no scripts at all, `frame-ancestors 'none'`), HSTS, `nosniff`,
//! `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.

mod i18n;
mod pages;
mod session;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::config::{FamilyConfig, PeerConfig};
use crate::error::{Error, Result};
use crate::model::AgencyId;
use crate::service::NodeService;

pub use session::{ADDRESS_FAILURES, ADDRESS_WINDOW};

/// Largest form accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The Content-Security-Policy of every response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the handlers share.
pub struct App {
    service: Arc<NodeService>,
    sessions: session::Sessions,
    throttle: session::SignInThrottle,
    /// The federation's peers with their display names, in config order.
    peers: Vec<(AgencyId, String)>,
    /// This agency's display name.
    home_name: String,
}

impl App {
    /// An agency's name for families: its configured display name, else its id.
    fn agency_name(&self, agency: &str) -> String {
        if agency == self.service.agency().as_str() {
            return self.home_name.clone();
        }
        self.peers
            .iter()
            .find(|(a, _)| a.as_str() == agency)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| agency.to_string())
    }
}

/// The base of invitation links for a family page bound at `addr`.
pub fn public_url(config: &FamilyConfig, addr: SocketAddr) -> String {
    match &config.public_url {
        Some(u) => u.clone(),
        None => format!("https://{addr}"),
    }
}

/// The invitation link for a token.
pub fn invite_link(base: &str, token: &str) -> String {
    format!("{}/invite/{token}", base.trim_end_matches('/'))
}

/// The family page's routes.
pub fn router(service: Arc<NodeService>, peers: &[PeerConfig], name: Option<&str>) -> Router {
    let app = Arc::new(App {
        home_name: name
            .map(String::from)
            .unwrap_or_else(|| service.agency().to_string()),
        service,
        sessions: session::Sessions::default(),
        throttle: session::SignInThrottle::default(),
        peers: peers
            .iter()
            .map(|p| {
                (
                    p.agency.clone(),
                    p.name.clone().unwrap_or_else(|| p.agency.to_string()),
                )
            })
            .collect(),
    });
    Router::new()
        .route("/", get(pages::index))
        .route("/style.css", get(pages::style))
        .route("/lang", post(pages::set_lang))
        .route("/signin", get(pages::signin_page).post(pages::signin))
        .route("/signout", post(pages::signout))
        .route("/invite/{token}", get(pages::invite_page))
        .route("/invite", post(pages::accept_invite))
        .route("/plans", get(pages::plans_page).post(pages::choose_plan))
        .route("/plan", get(pages::plan_page))
        .route("/goals", post(pages::add_goal))
        .route("/goals/comment", post(pages::comment_goal))
        .route("/sharing", get(pages::sharing_page))
        .route("/sharing/review", post(pages::review_grant))
        .route("/sharing/grant", post(pages::grant))
        .route("/sharing/revoke/review", post(pages::review_revoke))
        .route("/sharing/revoke", post(pages::revoke))
        .route("/seen", get(pages::seen_page))
        .fallback(pages::not_found)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(app)
}

/// Adds the security headers to every response, and logs the request without its path's
/// data (paths name pages only; an invitation token is cut off).
async fn security_headers(req: Request<axum::body::Body>, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let shown = if path.starts_with("/invite/") {
        "/invite/…"
    } else {
        path.as_str()
    };
    let span = tracing::info_span!("family", method = %method, path = %shown);
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    tracing::debug!(parent: &span, status = resp.status().as_u16(), "family page request");
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(
        h,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        header::HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=()",
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    resp
}

/// The client's address, for the sign-in throttle.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Handshaken TLS connections, as an axum listener.
pub struct TlsListener {
    incoming: futures::stream::BoxStream<'static, std::io::Result<TlsStream<TcpStream>>>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(tls)) => {
                    let peer = tls
                        .get_ref()
                        .0
                        .peer_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    return (tls, peer);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "family page: accept failed"),
                // The accept loop stopped (shutdown): wait to be dropped.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Serves the family page over TLS (HTTP/2 or HTTP/1.1) on a bound listener until
/// `shutdown` turns true.
pub async fn serve(
    service: Arc<NodeService>,
    config: FamilyConfig,
    peers: Vec<PeerConfig>,
    cert: Arc<crate::tls::ReloadingCert>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let addr = listener.local_addr().map_err(Error::internal)?;
    let mut tls = (*crate::tls::server_config(cert, None)?).clone();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let incoming = crate::tls::incoming(listener, Arc::new(tls)).boxed();
    let app = router(service, &peers, config.name.as_deref());
    tracing::info!(%addr, "family page listening");
    axum::serve(
        TlsListener { incoming, addr },
        app.into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|s| *s).await;
    })
    .await
    .map_err(|e| Error::Internal(format!("family page: {e}")))
}

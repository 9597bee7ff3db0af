//! Sessions of the family page, kept in memory (a restart signs everyone out).
//!
//! Every visitor gets a session on the first page it loads, so every form, the sign-in form
//! included, carries a CSRF token. A session id is 256 random bits, sent only in a
//! `__Host-` cookie (`Secure; HttpOnly; SameSite=Strict; Path=/`) and kept here only as its
//! SHA-256. Signing in replaces the session (new id, new CSRF token), so an id planted before
//! sign-in is worthless after it. Sessions end after [`IDLE`] without a request or
//! [`ABSOLUTE`] after they began.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::i18n::Lang;
use crate::model::PlanId;

/// The session cookie's name. `__Host-` makes browsers insist on `Secure`, `Path=/` and no
/// `Domain`.
pub const COOKIE: &str = "__Host-weft-family";
/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after it began, however active.
pub const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);
/// At most this many sessions are kept; the least recently used go first.
const MAX_SESSIONS: usize = 20_000;

/// One browser's session.
#[derive(Clone, Debug)]
pub struct Session {
    /// The signed-in guardian's user name.
    pub user: Option<String>,
    /// The token every form of this session carries.
    pub csrf: String,
    /// The chosen language, if the switch was used.
    pub lang: Option<Lang>,
    /// The plan being looked at.
    pub plan: Option<PlanId>,
    /// A message for the next page (after a redirect).
    pub flash: Option<Flash>,
    created: Instant,
    seen: Instant,
}

/// A one-time message to show on the next page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flash {
    /// Signed out.
    SignedOut,
    /// Invitation accepted.
    InviteDone,
    /// Consent recorded.
    Granted,
    /// Consent revoked.
    Revoked,
    /// Goal added.
    GoalAdded,
    /// Comment added.
    CommentAdded,
}

/// The session table.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The value of a `Set-Cookie` header for a session id.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        ABSOLUTE.as_secs()
    )
}

/// The session id in a `Cookie` header, if any.
pub fn cookie_id(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && value.len() == 64)
        .map(|(_, v)| v.to_string())
}

/// Whether a submitted CSRF token is the session's (constant time).
pub fn csrf_matches(session: &Session, submitted: Option<&str>) -> bool {
    match submitted {
        Some(s) => bool::from(s.as_bytes().ct_eq(session.csrf.as_bytes())),
        None => false,
    }
}

impl Sessions {
    /// The live session with this id, touched.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().ok()?;
        let k = key(id);
        let now = Instant::now();
        let live = map
            .get(&k)
            .is_some_and(|s| now - s.seen < IDLE && now - s.created < ABSOLUTE);
        if !live {
            map.remove(&k);
            return None;
        }
        let s = map.get_mut(&k)?;
        s.seen = now;
        Some(s.clone())
    }

    /// Starts a session; returns its id (for the cookie) and the session.
    pub fn create(&self, user: Option<String>, lang: Option<Lang>) -> (String, Session) {
        let id = random_hex();
        let now = Instant::now();
        let session = Session {
            user,
            csrf: random_hex(),
            lang,
            plan: None,
            flash: None,
            created: now,
            seen: now,
        };
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_SESSIONS {
                map.retain(|_, s| now - s.seen < IDLE && now - s.created < ABSOLUTE);
            }
            if map.len() >= MAX_SESSIONS {
                if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
            map.insert(key(&id), session.clone());
        }
        (id, session)
    }

    /// Changes a session in place.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Session)) {
        if let Ok(mut map) = self.map.lock() {
            if let Some(s) = map.get_mut(&key(id)) {
                f(s);
            }
        }
    }

    /// Takes the session's flash message.
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        let mut out = None;
        self.update(id, |s| out = s.flash.take());
        out
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&key(id));
        }
    }
}

/// Failed sign-ins from one client address within [`ADDRESS_WINDOW`] after which that
/// address may not try again until the oldest failure leaves the window. This is on top of the
/// per-account lockout, against one address trying many sign-in names. It is generous because
/// families behind one NAT or proxy share an address.
pub const ADDRESS_FAILURES: usize = 30;
/// The window in which an address's failures count.
pub const ADDRESS_WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_ADDRESSES: usize = 10_000;

/// Recent failed sign-ins per client address, in memory.
#[derive(Default)]
pub struct SignInThrottle {
    map: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl SignInThrottle {
    /// Whether this address has failed too often lately.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        let now = Instant::now();
        match map.get_mut(&ip) {
            Some(q) => {
                while q.front().is_some_and(|t| now - *t >= ADDRESS_WINDOW) {
                    q.pop_front();
                }
                q.len() >= ADDRESS_FAILURES
            }
            None => false,
        }
    }

    /// Counts a failed sign-in from this address.
    pub fn failed(&self, ip: IpAddr) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        let now = Instant::now();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, q| q.back().is_some_and(|t| now - *t < ADDRESS_WINDOW));
            if map.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let q = map.entry(ip).or_default();
        q.push_back(now);
        while q.len() > ADDRESS_FAILURES {
            q.pop_front();
        }
    }
}

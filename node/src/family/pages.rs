//! The family page's handlers: each one reads the session, checks the CSRF token of a form,
//! validates the input with a message per field, and calls [`NodeService`] as the signed-in
//! guardian. Business rules (who may see, grant, revoke, write) are the service's; nothing
//! here decides them.

// A helper's `Err` is the page to answer with, made at most once per request: boxing it would
// only add an allocation.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde_json::Value as Json;

use super::i18n::{join_and, Lang, Texts};
use super::session::{self, csrf_matches, Flash, Session};
use super::views::{self, csrf, layout, problems, Chrome};
use super::{App, PeerAddr};
use crate::catalogue;
use crate::error::Error;
use crate::model::{Caller, PlanId, SectionName};
use crate::service::family::{InviteRefusal, SignIn};
use crate::service::{ConsentState, ConsentView, GoalChange, GrantInput};

/// A submitted form: every name–value pair, in order (checkboxes repeat a name).
pub type FormData = Form<Vec<(String, String)>>;

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn fields<'a>(form: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    form.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The request's session, language and whether a cookie must be set.
pub struct Ctx {
    sid: String,
    session: Session,
    lang: Lang,
    new_cookie: bool,
}

impl Ctx {
    fn texts(&self) -> &'static Texts {
        self.lang.texts()
    }

    fn chrome<'a>(&'a self, here: &'a str, flash: Option<Flash>) -> Chrome<'a> {
        Chrome {
            lang: self.lang,
            csrf: &self.session.csrf,
            signed_in: self.session.user.is_some(),
            here,
            flash,
        }
    }
}

fn browser_lang(headers: &HeaderMap) -> Lang {
    Lang::from_accept_language(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
}

/// The visitor's session, or a new anonymous one (pages).
fn ctx(app: &App, headers: &HeaderMap) -> Ctx {
    if let Some(id) = session::cookie_id(headers) {
        if let Some(s) = app.sessions.get(&id) {
            let lang = s.lang.unwrap_or_else(|| browser_lang(headers));
            return Ctx {
                sid: id,
                session: s,
                lang,
                new_cookie: false,
            };
        }
    }
    let (sid, session) = app.sessions.create(None, None);
    Ctx {
        sid,
        session,
        lang: browser_lang(headers),
        new_cookie: true,
    }
}

/// The session of a form post, if its CSRF token matches; otherwise the refusal (403).
fn form_ctx(app: &App, headers: &HeaderMap, form: &[(String, String)]) -> Result<Ctx, Response> {
    let found = session::cookie_id(headers).and_then(|id| app.sessions.get(&id).map(|s| (id, s)));
    match found {
        Some((sid, s)) if csrf_matches(&s, field(form, "csrf")) => {
            let lang = s.lang.unwrap_or_else(|| browser_lang(headers));
            Ok(Ctx {
                sid,
                session: s,
                lang,
                new_cookie: false,
            })
        }
        _ => {
            tracing::info!("family page: form refused (no session or CSRF token mismatch)");
            let c = ctx(app, headers);
            let t = c.texts();
            Err(message_page(
                &c,
                StatusCode::FORBIDDEN,
                t.error_title,
                t.session_ended,
            ))
        }
    }
}

fn with_cookie(c: &Ctx, mut resp: Response) -> Response {
    if c.new_cookie {
        if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&c.sid)) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

fn page(c: &Ctx, status: StatusCode, here: &str, title: &str, body: Markup) -> Response {
    let markup = layout(&c.chrome(here, None), title, body);
    with_cookie(c, html_response(status, markup))
}

fn message_page(c: &Ctx, status: StatusCode, title: &str, message: &str) -> Response {
    let t = c.texts();
    let body = html! {
        p { (message) }
        @if c.session.user.is_none() {
            p { a href="/signin" { (t.sign_in_again) } }
        } @else {
            p { a href="/plan" { (t.nav_plan) } }
        }
    };
    page(c, status, "/", title, body)
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    (status, axum::response::Html(markup.into_string())).into_response()
}

/// 303 See Other to a path on this site.
fn see_other(path: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, path)]).into_response()
}

fn error_response(c: &Ctx, e: &Error) -> Response {
    let t = c.texts();
    match e {
        Error::NotFound(_) => message_page(c, StatusCode::NOT_FOUND, t.error_title, t.not_found),
        Error::PermissionDenied(_) | Error::Unauthenticated(_) => {
            message_page(c, StatusCode::FORBIDDEN, t.error_title, t.forbidden)
        }
        Error::InvalidInput(_) | Error::AlreadyExists(_) | Error::FailedPrecondition(_) => {
            message_page(c, StatusCode::BAD_REQUEST, t.error_title, t.bad_form)
        }
        Error::Storage(_) | Error::Internal(_) | Error::Aborted(_) => {
            tracing::error!(error = %e, "family page: request failed");
            message_page(
                c,
                StatusCode::INTERNAL_SERVER_ERROR,
                t.error_title,
                t.server_error,
            )
        }
    }
}

/// The signed-in guardian, or a redirect to the sign-in page.
fn guardian(app: &App, c: &Ctx) -> Result<Caller, Response> {
    c.session
        .user
        .as_deref()
        .and_then(|u| app.service.guardian_caller(u))
        .ok_or_else(|| with_cookie(c, see_other("/signin")))
}

/// The plan the session looks at: the chosen one, or the guardian's only plan.
async fn current_plan(app: &App, c: &Ctx, caller: &Caller) -> Result<PlanId, Response> {
    let profile = app
        .service
        .guardian_profile(&caller.user)
        .await
        .map_err(|e| error_response(c, &e))?;
    let plans = profile.map(|p| p.plans).unwrap_or_default();
    if let Some(p) = c.session.plan.filter(|p| plans.contains(p)) {
        return Ok(p);
    }
    match plans.as_slice() {
        [only] => Ok(*only),
        [] => Err(message_page(
            c,
            StatusCode::NOT_FOUND,
            c.texts().error_title,
            c.texts().not_found,
        )),
        _ => Err(with_cookie(c, see_other("/plans"))),
    }
}

/// The plan named by a form, as an id (the service decides whether the caller may use it).
/// A guardian's form, checked in order: the session and its CSRF token, a signed-in
/// guardian, and the plan the form names.
fn guardian_form(
    app: &App,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<(Ctx, Caller, PlanId), Response> {
    let c = form_ctx(app, headers, form)?;
    let caller = guardian(app, &c)?;
    let plan = form_plan(&c, form)?;
    Ok((c, caller, plan))
}

fn form_plan(c: &Ctx, form: &[(String, String)]) -> Result<PlanId, Response> {
    field(form, "plan")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            message_page(
                c,
                StatusCode::BAD_REQUEST,
                c.texts().error_title,
                c.texts().bad_form,
            )
        })
}

/// `GET /`
pub async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let c = ctx(&app, &headers);
    let to = if c.session.user.is_some() {
        "/plan"
    } else {
        "/signin"
    };
    with_cookie(&c, see_other(to))
}

/// `GET /style.css`
pub async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        views::STYLE,
    )
        .into_response()
}

/// Anything else: 404.
pub async fn not_found(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let c = ctx(&app, &headers);
    let t = c.texts();
    message_page(&c, StatusCode::NOT_FOUND, t.error_title, t.not_found)
}

/// `POST /lang`: the language switch.
pub async fn set_lang(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let c = match form_ctx(&app, &headers, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Some(l) = field(&form, "lang").and_then(Lang::parse) {
        app.sessions.update(&c.sid, |s| s.lang = Some(l));
    }
    let back = match field(&form, "back") {
        Some(p @ ("/plan" | "/plans" | "/sharing" | "/seen" | "/signin")) => p.to_string(),
        Some(p) if is_invite_path(p) => p.to_string(),
        _ => "/".to_string(),
    };
    (StatusCode::SEE_OTHER, [(header::LOCATION, back)]).into_response()
}

fn signin_body(t: &Texts, c: &Ctx, user: &str, errors: &[String]) -> Markup {
    html! {
        (problems(t, errors))
        p { (t.signin_intro) }
        form method="post" action="/signin" {
            (csrf(&c.session.csrf))
            label for="user" { (t.user_name) }
            input type="text" id="user" name="user" value=(user) autocomplete="username" autocapitalize="none" spellcheck="false" required;
            label for="passphrase" { (t.passphrase) }
            input type="password" id="passphrase" name="passphrase" autocomplete="current-password" required;
            button type="submit" { (t.signin_button) }
        }
    }
}

/// `GET /signin`
pub async fn signin_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let c = ctx(&app, &headers);
    if c.session.user.is_some() {
        return see_other("/plan");
    }
    let flash = app.sessions.take_flash(&c.sid);
    let t = c.texts();
    let markup = layout(
        &c.chrome("/signin", flash),
        t.signin_title,
        signin_body(t, &c, "", &[]),
    );
    with_cookie(&c, html_response(StatusCode::OK, markup))
}

/// Starts a signed-in session in place of the current one (a fresh id and CSRF token).
fn sign_in_session(
    app: &App,
    old: &Ctx,
    user: &str,
    plan: Option<PlanId>,
    flash: Option<Flash>,
) -> Response {
    app.sessions.remove(&old.sid);
    let (sid, _) = app
        .sessions
        .create(Some(user.to_string()), old.session.lang);
    app.sessions.update(&sid, |s| {
        s.plan = plan;
        s.flash = flash;
    });
    let mut resp = see_other("/plan");
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&sid)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /signin`
pub async fn signin(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let c = match form_ctx(&app, &headers, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let t = c.texts();
    let user = field(&form, "user")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let pass = field(&form, "passphrase").unwrap_or("");
    let ip = peer.0.ip();
    if app.throttle.blocked(ip) {
        tracing::warn!(target: "weft::audit", client = %ip, "sign-in refused: too many failures from this address");
        let markup = layout(
            &c.chrome("/signin", None),
            t.signin_title,
            signin_body(t, &c, &user, &[t.signin_throttled.to_string()]),
        );
        return html_response(StatusCode::TOO_MANY_REQUESTS, markup);
    }
    let outcome = match app.service.sign_in(&user, pass).await {
        Ok(o) => o,
        Err(e) => return error_response(&c, &e),
    };
    let (status, message) = match outcome {
        SignIn::Ok(caller) => return sign_in_session(&app, &c, &caller.user, None, None),
        SignIn::Refused => (StatusCode::UNAUTHORIZED, t.signin_refused.to_string()),
        SignIn::Locked { until_ms } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("{} {}.", t.signin_locked, c.lang.date_time(until_ms)),
        ),
    };
    app.throttle.failed(ip);
    let markup = layout(
        &c.chrome("/signin", None),
        t.signin_title,
        signin_body(t, &c, &user, &[message]),
    );
    html_response(status, markup)
}

/// `POST /signout`
pub async fn signout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let c = match form_ctx(&app, &headers, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    app.sessions.remove(&c.sid);
    let (sid, _) = app.sessions.create(None, c.session.lang);
    app.sessions
        .update(&sid, |s| s.flash = Some(Flash::SignedOut));
    let mut resp = see_other("/signin");
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&sid)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

fn invite_body(
    t: &Texts,
    c: &Ctx,
    token: &str,
    until: &str,
    user: &str,
    errors: &[String],
) -> Markup {
    html! {
        (problems(t, errors))
        p { (t.invite_intro) }
        p class="meta" { (t.invite_valid_until) " " (until) "." }
        form method="post" action="/invite" {
            (csrf(&c.session.csrf))
            input type="hidden" name="token" value=(token);
            label for="user" { (t.user_name) }
            span class="hint" id="user-hint" { (t.user_name_hint) }
            input type="text" id="user" name="user" value=(user) aria-describedby="user-hint" autocomplete="username" autocapitalize="none" spellcheck="false" required;
            label for="passphrase" { (t.passphrase) }
            span class="hint" id="pass-hint" { (t.passphrase_hint) }
            input type="password" id="passphrase" name="passphrase" aria-describedby="pass-hint" autocomplete="new-password" minlength="12" required;
            label for="again" { (t.passphrase_again) }
            input type="password" id="again" name="again" autocomplete="new-password" minlength="12" required;
            button type="submit" { (t.invite_button) }
        }
    }
}

/// `/invite/` and 64 hex digits: the only other page the language switch returns to.
fn is_invite_path(p: &str) -> bool {
    p.strip_prefix("/invite/")
        .is_some_and(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn invite_refused(c: &Ctx) -> Response {
    let t = c.texts();
    message_page(
        c,
        StatusCode::GONE,
        t.invite_invalid_title,
        t.invite_invalid,
    )
}

/// `GET /invite/{token}`
pub async fn invite_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let c = ctx(&app, &headers);
    let t = c.texts();
    match app.service.invite_info(&token).await {
        Ok(Ok(info)) => page(
            &c,
            StatusCode::OK,
            &format!("/invite/{token}"),
            t.invite_title,
            invite_body(
                t,
                &c,
                &token,
                &c.lang.date_time(info.expires_at_ms),
                "",
                &[],
            ),
        ),
        Ok(Err(_)) => invite_refused(&c),
        Err(e) => error_response(&c, &e),
    }
}

/// `POST /invite`
pub async fn accept_invite(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let c = match form_ctx(&app, &headers, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let t = c.texts();
    let token = field(&form, "token").unwrap_or("");
    let user = field(&form, "user")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let pass = field(&form, "passphrase").unwrap_or("");
    let again = field(&form, "again").unwrap_or("");
    match app.service.accept_invite(token, &user, pass, again).await {
        Ok(Ok(caller)) => {
            let plan = app
                .service
                .guardian_profile(&caller.user)
                .await
                .ok()
                .flatten()
                .and_then(|p| p.plans.first().copied());
            sign_in_session(&app, &c, &caller.user, plan, Some(Flash::InviteDone))
        }
        Ok(Err(InviteRefusal::Unknown | InviteRefusal::Expired | InviteRefusal::Used)) => {
            invite_refused(&c)
        }
        Err(e @ (Error::InvalidInput(_) | Error::AlreadyExists(_))) => {
            let until = match app.service.invite_info(token).await {
                Ok(Ok(info)) => c.lang.date_time(info.expires_at_ms),
                _ => return invite_refused(&c),
            };
            let message = invite_problem(t, &e, &user, pass, again);
            page(
                &c,
                StatusCode::BAD_REQUEST,
                &format!("/invite/{token}"),
                t.invite_title,
                invite_body(t, &c, token, &until, &user, &[message]),
            )
        }
        Err(e) => error_response(&c, &e),
    }
}

/// What was wrong with an invitation form the service refused, in the page's language. The
/// service has the last word; this only picks the words.
fn invite_problem(t: &Texts, err: &Error, user: &str, pass: &str, again: &str) -> String {
    use crate::service::family::{MAX_PASSPHRASE_CHARS, MIN_PASSPHRASE_CHARS};
    let chars = pass.chars().count();
    let text = if matches!(err, Error::AlreadyExists(_)) {
        t.err_name_taken
    } else if crate::model::validate_user_name(user).is_err() {
        t.err_user_name
    } else if !(MIN_PASSPHRASE_CHARS..=MAX_PASSPHRASE_CHARS).contains(&chars) {
        t.err_pass_length
    } else if pass != again {
        t.err_pass_differ
    } else {
        t.bad_form
    };
    text.to_string()
}

/// `GET /plans`: choose among several plans.
pub async fn plans_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let c = ctx(&app, &headers);
    let caller = match guardian(&app, &c) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let t = c.texts();
    let plans = match app.service.guardian_profile(&caller.user).await {
        Ok(p) => p.map(|p| p.plans).unwrap_or_default(),
        Err(e) => return error_response(&c, &e),
    };
    let body = html! {
        p { (t.choose_plan) }
        ul {
            @for (i, p) in plans.iter().enumerate() {
                li {
                    form method="post" action="/plans" {
                        (csrf(&c.session.csrf))
                        input type="hidden" name="plan" value=(p.to_string());
                        button type="submit" class="secondary" { (t.open) " " (t.plan_n) " " (i + 1) }
                    }
                }
            }
        }
    };
    page(&c, StatusCode::OK, "/plans", t.choose_plan_title, body)
}

/// `POST /plans`: choose a plan. A plan the guardian is not bound to is "not found".
pub async fn choose_plan(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let (c, caller, plan) = match guardian_form(&app, &headers, &form) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let bound = match app.service.guardian_profile(&caller.user).await {
        Ok(p) => p.is_some_and(|p| p.plans.contains(&plan)),
        Err(e) => return error_response(&c, &e),
    };
    if !bound {
        let t = c.texts();
        return message_page(&c, StatusCode::NOT_FOUND, t.error_title, t.not_found);
    }
    app.sessions.update(&c.sid, |s| s.plan = Some(plan));
    see_other("/plan")
}

fn render_value(lang: Lang, v: &Json) -> Markup {
    let t = lang.texts();
    html! {
        @match v {
            Json::String(s) => (views::text_block(s)),
            Json::Bool(b) => (if *b { t.yes } else { t.no }),
            Json::Number(n) => (n.to_string()),
            Json::Array(items) => {
                ul { @for i in items { li { (render_value(lang, i)) } } }
            },
            Json::Object(m) => {
                dl { @for (k, v) in m { dt { (lang.field(k)) } dd { (render_value(lang, v)) } } }
            },
            Json::Null => "",
        }
    }
}

fn who(app: &App, agency: &str, user: &str) -> String {
    let name = app.agency_name(agency);
    if user.is_empty() || user == "-" {
        name
    } else {
        format!("{user} ({name})")
    }
}

fn goal_form_errors(t: &Texts, form: &[(String, String)]) -> Vec<String> {
    let mut errors = Vec::new();
    if !field(form, "domain").is_some_and(|d| catalogue::GOAL_DOMAINS.contains(&d))
        || !field(form, "horizon").is_some_and(|h| catalogue::GOAL_HORIZONS.contains(&h))
    {
        errors.push(t.err_choice.to_string());
    }
    let text = field(form, "text").unwrap_or("").trim();
    if text.is_empty() || text.chars().count() > 1000 {
        errors.push(t.err_goal_text.to_string());
    }
    if let Some(d) = field(form, "target_date").filter(|d| !d.trim().is_empty()) {
        if parse_day(d).is_none() {
            errors.push(t.err_until.to_string());
        }
    }
    errors
}

fn parse_day(s: &str) -> Option<time::Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s.trim(), format).ok()
}

/// `GET /plan`
pub async fn plan_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let c = ctx(&app, &headers);
    render_plan(&app, &c, StatusCode::OK, &[], &[]).await
}

async fn render_plan(
    app: &App,
    c: &Ctx,
    status: StatusCode,
    errors: &[String],
    form: &[(String, String)],
) -> Response {
    let caller = match guardian(app, c) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let plan_id = match current_plan(app, c, &caller).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (_, views_, withheld) = match app.service.get_plan(&caller, plan_id, &[]).await {
        Ok(v) => v,
        Err(e) => return error_response(c, &e),
    };
    let flash = app.sessions.take_flash(&c.sid);
    let lang = c.lang;
    let t = c.texts();
    let body = html! {
        p { (t.plan_intro) }
        @for v in &views_ {
            section aria-labelledby=(format!("s-{}", v.name.as_str().replace('/', "-"))) {
                h2 id=(format!("s-{}", v.name.as_str().replace('/', "-"))) { (lang.section(v.name.as_str())) }
                @if v.changes == 0 {
                    p class="meta" { (t.never_changed) }
                } @else {
                    @let (agency, user) = v.last_changed_by.split_once('/').unwrap_or((&v.last_changed_by, ""));
                    p class="meta" { (t.last_changed) " " (who(app, agency, user)) ", " (lang.date_time(v.last_changed_at)) }
                }
                @if v.name.as_str() == "goals" {
                    (goals_block(app, c, plan_id, &v.content, errors, form))
                } @else if v.content.as_object().is_some_and(|m| !m.is_empty()) {
                    (render_value(lang, &v.content))
                } @else if v.changes > 0 {
                    p { (t.empty_section) }
                }
            }
        }
        @if !withheld.is_empty() {
            h2 { (t.withheld) }
            ul { @for w in &withheld { li { (lang.section(w.as_str())) } } }
        }
    };
    let markup = layout(&c.chrome("/plan", flash), t.plan_title, body);
    with_cookie(c, html_response(status, markup))
}

fn goals_block(
    _app: &App,
    c: &Ctx,
    plan: PlanId,
    content: &Json,
    errors: &[String],
    form: &[(String, String)],
) -> Markup {
    let lang = c.lang;
    let t = c.texts();
    let goals: Vec<&Json> = content
        .get("goals")
        .and_then(Json::as_object)
        .map(|m| m.values().collect())
        .unwrap_or_default();
    let s = |v: &Json, k: &str| v.get(k).and_then(Json::as_str).unwrap_or("").to_string();
    let old = |k: &str| field(form, k).unwrap_or("").to_string();
    html! {
        @if goals.is_empty() {
            p { (t.goal_none) }
        }
        @for (i, g) in goals.iter().enumerate() {
            div class="goal" {
                h3 { (views::text_block(&s(g, "text"))) }
                dl {
                    dt { (t.goal_domain) } dd { (lang.value(&s(g, "domain"))) }
                    dt { (t.goal_horizon) } dd { (lang.value(&s(g, "horizon"))) }
                    dt { (t.goal_status) } dd { (lang.value(&s(g, "status"))) }
                    @if !s(g, "target_date").is_empty() {
                        dt { (t.goal_target) }
                        dd { (parse_day(&s(g, "target_date")).map(|d| lang.date(d.midnight().assume_utc().unix_timestamp() * 1000)).unwrap_or_default()) }
                    }
                }
                @let notes = g.get("progress").and_then(Json::as_array).cloned().unwrap_or_default();
                @if !notes.is_empty() {
                    h4 { (t.goal_progress) }
                    ul {
                        @for n in &notes {
                            @let author = s(n, "author");
                            @let (agency, user) = author.split_once('/').unwrap_or((&author, ""));
                            li {
                                (views::text_block(&s(n, "text")))
                                span class="meta" { " — " (who(_app, agency, user)) ", " (lang.date_time(n.get("at_ms").and_then(Json::as_i64).unwrap_or(0))) }
                            }
                        }
                    }
                }
                form method="post" action="/goals/comment" {
                    (csrf(&c.session.csrf))
                    input type="hidden" name="plan" value=(plan.to_string());
                    input type="hidden" name="goal" value=(s(g, "id"));
                    label for=(format!("note-{i}")) { (t.comment) }
                    textarea id=(format!("note-{i}")) name="note" maxlength="4000" required {}
                    button type="submit" class="secondary" { (t.comment_button) }
                }
            }
        }
        h3 id="add-goal" { (t.add_goal_title) }
        (problems(t, errors))
        form method="post" action="/goals" aria-labelledby="add-goal" {
            (csrf(&c.session.csrf))
            input type="hidden" name="plan" value=(plan.to_string());
            label for="goal-text" { (t.goal_text) }
            textarea id="goal-text" name="text" maxlength="1000" required { (old("text")) }
            label for="goal-domain" { (t.goal_domain) }
            select id="goal-domain" name="domain" {
                @for d in catalogue::GOAL_DOMAINS {
                    option value=(d) selected[old("domain") == *d] { (lang.value(d)) }
                }
            }
            label for="goal-horizon" { (t.goal_horizon) }
            select id="goal-horizon" name="horizon" {
                @for h in catalogue::GOAL_HORIZONS {
                    option value=(h) selected[old("horizon") == *h] { (lang.value(h)) }
                }
            }
            label for="goal-target" { (t.goal_target) " (" (t.optional) ")" }
            span class="hint" id="target-hint" { (t.grant_until_hint) }
            input type="date" id="goal-target" name="target_date" value=(old("target_date")) aria-describedby="target-hint";
            button type="submit" { (t.add_goal_button) }
        }
    }
}

/// `POST /goals`: add a goal as the guardian.
pub async fn add_goal(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let (c, caller, plan) = match guardian_form(&app, &headers, &form) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let errors = goal_form_errors(c.texts(), &form);
    if !errors.is_empty() {
        return render_plan(&app, &c, StatusCode::BAD_REQUEST, &errors, &form).await;
    }
    let target = field(&form, "target_date")
        .map(str::trim)
        .filter(|d| !d.is_empty());
    match app
        .service
        .add_goal(
            &caller,
            plan,
            field(&form, "domain").unwrap_or(""),
            field(&form, "text").unwrap_or("").trim(),
            field(&form, "horizon").unwrap_or(""),
            target,
        )
        .await
    {
        Ok(_) => {
            app.sessions
                .update(&c.sid, |s| s.flash = Some(Flash::GoalAdded));
            see_other("/plan")
        }
        Err(e) => error_response(&c, &e),
    }
}

/// `POST /goals/comment`: a progress note on a goal, as the guardian.
pub async fn comment_goal(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let (c, caller, plan) = match guardian_form(&app, &headers, &form) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let note = field(&form, "note").unwrap_or("").trim();
    let goal = field(&form, "goal").unwrap_or("");
    if note.is_empty() || note.chars().count() > 4000 {
        let errors = vec![c.texts().err_comment.to_string()];
        return render_plan(&app, &c, StatusCode::BAD_REQUEST, &errors, &[]).await;
    }
    let change = GoalChange {
        note: Some(note),
        ..GoalChange::default()
    };
    match app.service.update_goal(&caller, plan, goal, change).await {
        Ok(_) => {
            app.sessions
                .update(&c.sid, |s| s.flash = Some(Flash::CommentAdded));
            see_other("/plan")
        }
        Err(e) => error_response(&c, &e),
    }
}

fn purpose_label(t: &Texts, p: &str) -> String {
    t.purposes
        .iter()
        .find(|(k, _)| *k == p)
        .map(|(_, l)| l.to_string())
        .unwrap_or_else(|| p.replace('_', " "))
}

fn access_label(t: &Texts, a: &str) -> &'static str {
    if a == "read_write" {
        t.access_read_write
    } else {
        t.access_read
    }
}

/// The last day a provision is in force (its end is exclusive, at the next midnight).
fn last_day_ms(until: Option<weft_consent::Timestamp>) -> Option<i64> {
    until.map(|u| u.as_millis() - 1)
}

fn consent_sentence(app: &App, lang: Lang, v: &ConsentView) -> String {
    let t = lang.texts();
    let Some(p) = v.record.provisions.first() else {
        return String::new();
    };
    let sections: Vec<String> = p.sections.iter().map(|s| lang.section(s)).collect();
    let say = if matches!(v.state, ConsentState::Active | ConsentState::NotYetValid) {
        t.sentence
    } else {
        t.past_sentence
    };
    say(
        &app.agency_name(p.grantee.as_str()),
        access_label(t, p.access.as_str()),
        &join_and(&sections, t.and),
        &last_day_ms(p.valid_until)
            .map(|d| lang.date(d))
            .unwrap_or_default(),
        &purpose_label(t, p.purpose.as_str()),
    )
}

/// A validated grant request from the form.
struct GrantForm {
    grantee: String,
    sections: Vec<String>,
    access: String,
    purpose: String,
    until: String,
}

fn grant_form(app: &App, c: &Ctx, form: &[(String, String)]) -> Result<GrantForm, Vec<String>> {
    let t = c.texts();
    let mut errors = Vec::new();
    let grantee = field(form, "agency").unwrap_or("").to_string();
    if !app.peers.iter().any(|(a, _)| a.as_str() == grantee) {
        errors.push(t.err_agency.to_string());
    }
    let mut sections: Vec<String> = Vec::new();
    let mut bad_section = false;
    for s in fields(form, "sections") {
        match SectionName::parse(s) {
            Ok(n) if catalogue::fixed_sections().any(|f| f.name == n.as_str()) => {
                if !sections.contains(&n.to_string()) {
                    sections.push(n.to_string());
                }
            }
            _ => bad_section = true,
        }
    }
    if sections.is_empty() || bad_section {
        errors.push(t.err_sections.to_string());
    }
    let access = field(form, "access").unwrap_or("").to_string();
    if !matches!(access.as_str(), "read" | "read_write") {
        errors.push(t.err_access.to_string());
    }
    let purpose = field(form, "purpose").unwrap_or("").to_string();
    if !t.purposes.iter().any(|(k, _)| *k == purpose) {
        errors.push(t.err_purpose.to_string());
    }
    let until = field(form, "until").unwrap_or("").trim().to_string();
    match parse_day(&until) {
        None => errors.push(t.err_until.to_string()),
        Some(d) => {
            let today = time::OffsetDateTime::from_unix_timestamp(
                app.service.clock_now().as_millis().div_euclid(1000),
            )
            .map(|n| n.date())
            .unwrap_or(time::Date::MIN);
            if d < today {
                errors.push(t.err_until_past.to_string());
            }
        }
    }
    if errors.is_empty() {
        Ok(GrantForm {
            grantee,
            sections,
            access,
            purpose,
            until,
        })
    } else {
        Err(errors)
    }
}

/// `GET /sharing`
pub async fn sharing_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let c = ctx(&app, &headers);
    render_sharing(&app, &c, StatusCode::OK, &[], &[]).await
}

async fn render_sharing(
    app: &App,
    c: &Ctx,
    status: StatusCode,
    errors: &[String],
    form: &[(String, String)],
) -> Response {
    let caller = match guardian(app, c) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let plan = match current_plan(app, c, &caller).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let consents = match app.service.list_consents(&caller, Some(plan), None).await {
        Ok(v) => v,
        Err(e) => return error_response(c, &e),
    };
    let receipts = match app.service.plan_purge_receipts(&caller, plan).await {
        Ok(r) => r,
        Err(e) => return error_response(c, &e),
    };
    let flash = app.sessions.take_flash(&c.sid);
    let lang = c.lang;
    let t = c.texts();
    let sections: Vec<&'static str> = catalogue::fixed_sections().map(|s| s.name).collect();
    // Agencies: the federation's peers, then any other grantee named by a consent.
    let mut agencies: Vec<(String, String)> = app
        .peers
        .iter()
        .map(|(a, n)| (a.to_string(), n.clone()))
        .collect();
    for v in &consents {
        for p in &v.record.provisions {
            if !agencies.iter().any(|(a, _)| a == p.grantee.as_str()) {
                agencies.push((p.grantee.to_string(), app.agency_name(p.grantee.as_str())));
            }
        }
    }
    let live =
        |v: &&ConsentView| matches!(v.state, ConsentState::Active | ConsentState::NotYetValid);
    let mut cells: BTreeMap<(String, &str), Vec<String>> = BTreeMap::new();
    for v in consents.iter().filter(live) {
        for p in &v.record.provisions {
            for s in &p.sections {
                if let Some(sec) = sections.iter().find(|x| **x == s.as_str()) {
                    let date = last_day_ms(p.valid_until)
                        .map(|d| lang.date(d))
                        .unwrap_or_default();
                    cells
                        .entry((p.grantee.to_string(), sec))
                        .or_default()
                        .push(format!(
                            "{} {} {} ({})",
                            crate::family::i18n::humanize(access_label(t, p.access.as_str())),
                            t.until,
                            date,
                            purpose_label(t, p.purpose.as_str())
                        ));
                }
            }
        }
    }
    let old = |k: &str| field(form, k).unwrap_or("").to_string();
    let old_sections = fields(form, "sections");
    let mut newest_first: Vec<&ConsentView> = consents.iter().collect();
    newest_first.reverse();
    let body = html! {
        p { (t.sharing_intro) }
        div class="scroll" role="region" aria-labelledby="who-table" tabindex="0" {
            table {
                caption id="who-table" { (t.sharing_title) }
                thead {
                    tr {
                        th scope="col" { (t.agency) }
                        @for s in &sections { th scope="col" { (lang.section(s)) } }
                    }
                }
                tbody {
                    @for (a, name) in &agencies {
                        tr {
                            th scope="row" { (name) }
                            @for s in &sections {
                                td {
                                    @match cells.get(&(a.clone(), *s)) {
                                        Some(list) => { @for l in list { (l) br; } },
                                        None => { span aria-hidden="true" { "—" } span class="visually-hidden" { (t.nobody) } },
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { (t.consents_title) }
        @if consents.is_empty() {
            p { (t.no_consents) }
        }
        ul {
            @for v in &newest_first {
                li {
                    p {
                        strong { (state_label(t, v.state)) ": " }
                        (consent_sentence(app, lang, v))
                    }
                    p class="meta" {
                        (t.signed_by) " " (v.record.recorded_by.user) " (" (app.agency_name(v.record.recorded_by.agency.as_str())) ") "
                        (t.recorded_on) " " (lang.date_time(v.record.recorded_at.as_millis()))
                    }
                    @if matches!(v.state, ConsentState::Active | ConsentState::NotYetValid) {
                        form method="post" action="/sharing/revoke/review" {
                            (csrf(&c.session.csrf))
                            input type="hidden" name="plan" value=(plan.to_string());
                            input type="hidden" name="consent" value=(v.record.id.as_str());
                            button type="submit" class="danger" { (t.revoke_button) }
                        }
                    }
                    @if let (ConsentState::Revoked, Some(r)) = (v.state, &v.revocation) {
                        p class="meta" { (t.revoked_on) " " (lang.date_time(r.revoked_at.as_millis())) " (" (r.revoked_by.user) ")" }
                        @let mine: Vec<_> = receipts.iter().filter(|x| {
                            v.record.provisions.iter().any(|p| p.grantee == x.holder && p.sections.contains(&x.section))
                                && x.purged_at.as_millis() + 60_000 >= r.revoked_at.as_millis()
                        }).collect();
                        @if mine.is_empty() {
                            p class="meta" { (t.purge_waiting) }
                        } @else {
                            ul class="receipts" {
                                @for x in &mine {
                                    li { (t.purge_confirmed) ": " (app.agency_name(x.holder.as_str())) ", " (lang.section(&x.section)) ", " (lang.date_time(x.purged_at.as_millis())) }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 id="grant" { (t.grant_title) }
        p { (t.grant_intro) }
        (problems(t, errors))
        form method="post" action="/sharing/review" aria-labelledby="grant" {
            (csrf(&c.session.csrf))
            input type="hidden" name="plan" value=(plan.to_string());
            fieldset {
                legend { (t.grant_agency) }
                @for (a, name) in app.peers.iter() {
                    label { input type="radio" name="agency" value=(a.as_str()) checked[old("agency") == a.as_str()] required; (name) }
                }
            }
            fieldset {
                legend { (t.grant_sections) }
                @for s in &sections {
                    label { input type="checkbox" name="sections" value=(s) checked[old_sections.contains(s)]; (lang.section(s)) }
                }
            }
            fieldset {
                legend { (t.grant_access) }
                label { input type="radio" name="access" value="read" checked[old("access") != "read_write"]; (crate::family::i18n::humanize(t.access_read)) }
                label { input type="radio" name="access" value="read_write" checked[old("access") == "read_write"]; (crate::family::i18n::humanize(t.access_read_write)) }
            }
            label for="purpose" { (t.grant_purpose) }
            select id="purpose" name="purpose" {
                @for (k, l) in t.purposes {
                    option value=(k) selected[old("purpose") == k] { (crate::family::i18n::humanize(l)) }
                }
            }
            label for="until" { (t.grant_until) }
            span class="hint" id="until-hint" { (t.grant_until_hint) }
            input type="date" id="until" name="until" value=(old("until")) aria-describedby="until-hint" required;
            button type="submit" { (t.review_button) }
        }
    };
    let markup = layout(&c.chrome("/sharing", flash), t.sharing_title, body);
    with_cookie(c, html_response(status, markup))
}

fn state_label(t: &Texts, s: ConsentState) -> &'static str {
    match s {
        ConsentState::Active => t.state_active,
        ConsentState::NotYetValid => t.state_not_yet_valid,
        ConsentState::Expired => t.state_expired,
        ConsentState::Revoked => t.state_revoked,
    }
}

/// `POST /sharing/review`: the confirmation step, restating the consent in a sentence.
pub async fn review_grant(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let c = match form_ctx(&app, &headers, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = guardian(&app, &c) {
        return r;
    }
    let plan = match form_plan(&c, &form) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let g = match grant_form(&app, &c, &form) {
        Ok(g) => g,
        Err(errors) => {
            return render_sharing(&app, &c, StatusCode::BAD_REQUEST, &errors, &form).await
        }
    };
    let lang = c.lang;
    let t = c.texts();
    let sections: Vec<String> = g.sections.iter().map(|s| lang.section(s)).collect();
    let until_ms = parse_day(&g.until)
        .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
        .unwrap_or(0);
    let sentence = (t.sentence)(
        &app.agency_name(&g.grantee),
        access_label(t, &g.access),
        &join_and(&sections, t.and),
        &lang.date(until_ms),
        &purpose_label(t, &g.purpose),
    );
    let body = html! {
        p { (t.review_intro) }
        p class="sentence" id="sentence" { (sentence) }
        div class="actions" {
            form method="post" action="/sharing/grant" {
                (csrf(&c.session.csrf))
                input type="hidden" name="plan" value=(plan.to_string());
                input type="hidden" name="agency" value=(g.grantee);
                @for s in &g.sections { input type="hidden" name="sections" value=(s); }
                input type="hidden" name="access" value=(g.access);
                input type="hidden" name="purpose" value=(g.purpose);
                input type="hidden" name="until" value=(g.until);
                button type="submit" aria-describedby="sentence" { (t.confirm_grant) }
            }
            a href="/sharing" { (t.change) }
        }
    };
    page(&c, StatusCode::OK, "/sharing", t.review_title, body)
}

/// `POST /sharing/grant`: records the consent (e-signature, the guardian as grantor).
pub async fn grant(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let (c, caller, plan) = match guardian_form(&app, &headers, &form) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let g = match grant_form(&app, &c, &form) {
        Ok(g) => g,
        Err(errors) => {
            return render_sharing(&app, &c, StatusCode::BAD_REQUEST, &errors, &form).await
        }
    };
    let profile = match app.service.guardian_profile(&caller.user).await {
        Ok(Some(p)) => p,
        Ok(None) => return with_cookie(&c, see_other("/signin")),
        Err(e) => return error_response(&c, &e),
    };
    let input = GrantInput {
        plan: Some(plan),
        grantee: g.grantee,
        sections: g.sections,
        access: g.access,
        purpose: g.purpose,
        valid_from: None,
        valid_until: g.until,
        grantor_name: profile.name,
        relationship: profile.relationship.to_string(),
        method: "e_signature".into(),
    };
    match app.service.grant(&caller, input).await {
        Ok(_) => {
            app.sessions
                .update(&c.sid, |s| s.flash = Some(Flash::Granted));
            see_other("/sharing")
        }
        Err(Error::InvalidInput(_)) => {
            let errors = vec![c.texts().bad_form.to_string()];
            render_sharing(&app, &c, StatusCode::BAD_REQUEST, &errors, &form).await
        }
        Err(e) => error_response(&c, &e),
    }
}

/// `POST /sharing/revoke/review`: asks to confirm a revocation.
pub async fn review_revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let (c, caller, plan) = match guardian_form(&app, &headers, &form) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let id = field(&form, "consent").unwrap_or("");
    let consents = match app.service.list_consents(&caller, Some(plan), None).await {
        Ok(v) => v,
        Err(e) => return error_response(&c, &e),
    };
    let t = c.texts();
    let Some(v) = consents.iter().find(|v| v.record.id.as_str() == id) else {
        return message_page(&c, StatusCode::NOT_FOUND, t.error_title, t.not_found);
    };
    let lang = c.lang;
    let p = v.record.provisions.first();
    let sections: Vec<String> = p
        .map(|p| p.sections.iter().map(|s| lang.section(s)).collect())
        .unwrap_or_default();
    let agency = p
        .map(|p| app.agency_name(p.grantee.as_str()))
        .unwrap_or_default();
    let body = html! {
        p { (consent_sentence(&app, lang, v)) }
        p class="sentence" id="sentence" { ((t.revoke_sentence)(&agency, &join_and(&sections, t.and))) }
        p { (t.revoke_intro) }
        div class="actions" {
            form method="post" action="/sharing/revoke" {
                (csrf(&c.session.csrf))
                input type="hidden" name="plan" value=(plan.to_string());
                input type="hidden" name="consent" value=(id);
                button type="submit" class="danger" aria-describedby="sentence" { (t.confirm_revoke) }
            }
            a href="/sharing" { (t.keep) }
        }
    };
    page(&c, StatusCode::OK, "/sharing", t.revoke_title, body)
}

/// `POST /sharing/revoke`: revokes a consent.
pub async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let (c, caller, plan) = match guardian_form(&app, &headers, &form) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let id = field(&form, "consent").unwrap_or("");
    // The consent must belong to the plan the form names and the guardian may see.
    let consents = match app.service.list_consents(&caller, Some(plan), None).await {
        Ok(v) => v,
        Err(e) => return error_response(&c, &e),
    };
    if !consents.iter().any(|v| v.record.id.as_str() == id) {
        let t = c.texts();
        return message_page(&c, StatusCode::NOT_FOUND, t.error_title, t.not_found);
    }
    match app.service.revoke(&caller, id, None).await {
        Ok(_) | Err(Error::AlreadyExists(_)) => {
            app.sessions
                .update(&c.sid, |s| s.flash = Some(Flash::Revoked));
            see_other("/sharing")
        }
        Err(e) => error_response(&c, &e),
    }
}

fn action_label(t: &Texts, action: &str) -> String {
    t.actions
        .iter()
        .find(|(k, _)| *k == action)
        .map(|(_, l)| l.to_string())
        .unwrap_or_else(|| action.replace('_', " "))
}

fn basis_label(t: &Texts, basis: &str) -> String {
    basis
        .split("; ")
        .map(|b| {
            if b == "home agency" {
                t.basis_home.to_string()
            } else if let Some((_, purpose)) = b.split_once(" (") {
                format!(
                    "{} ({})",
                    t.basis_consent,
                    purpose_label(t, purpose.trim_end_matches(')'))
                )
            } else {
                b.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `GET /seen`: the record of disclosures (34 CFR 99.32) and the purge receipts.
pub async fn seen_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let c = ctx(&app, &headers);
    let caller = match guardian(&app, &c) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let plan = match current_plan(&app, &c, &caller).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let entries = match app.service.disclosures(&caller, plan).await {
        Ok(v) => v,
        Err(e) => return error_response(&c, &e),
    };
    let mut receipts = match app.service.plan_purge_receipts(&caller, plan).await {
        Ok(r) => r,
        Err(e) => return error_response(&c, &e),
    };
    receipts.sort_by_key(|r| std::cmp::Reverse(r.purged_at));
    let lang = c.lang;
    let t = c.texts();
    let body = html! {
        p { (t.seen_intro) }
        @if entries.is_empty() {
            p { (t.no_disclosures) }
        } @else {
            div class="scroll" role="region" aria-labelledby="seen-table" tabindex="0" {
                table {
                    caption id="seen-table" { (t.seen_title) }
                    thead { tr { th scope="col" { (t.when) } th scope="col" { (t.who) } th scope="col" { (t.what) } th scope="col" { (t.section) } th scope="col" { (t.basis) } } }
                    tbody {
                        @for e in &entries {
                            tr {
                                td { (lang.date_time(e.draft.time.as_millis())) }
                                td { (who(&app, &e.draft.agency, &e.draft.user)) }
                                td { (action_label(t, e.draft.action.as_str())) }
                                td { (join_and(&e.draft.sections.iter().map(|s| lang.section(s)).collect::<Vec<_>>(), t.and)) }
                                td { (basis_label(t, &e.draft.basis)) }
                            }
                        }
                    }
                }
            }
        }
        h2 id="receipts" { (t.receipts_title) }
        p { (t.receipts_intro) }
        @if receipts.is_empty() {
            p { (t.no_receipts) }
        } @else {
            table {
                caption { (t.receipts_title) }
                thead { tr { th scope="col" { (t.agency) } th scope="col" { (t.section) } th scope="col" { (t.deleted_on) } } }
                tbody {
                    @for r in &receipts {
                        tr {
                            td { (app.agency_name(r.holder.as_str())) }
                            td { (lang.section(&r.section)) }
                            td { (lang.date_time(r.purged_at.as_millis())) }
                        }
                    }
                }
            }
        }
    };
    let flash = app.sessions.take_flash(&c.sid);
    let markup = layout(&c.chrome("/seen", flash), t.seen_title, body);
    with_cookie(&c, html_response(StatusCode::OK, markup))
}

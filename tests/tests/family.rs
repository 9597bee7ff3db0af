//! The family page over real HTTPS, request by request: security headers and cookie flags,
//! CSRF refusals, one guardian's session against another child's plan, invitations that are
//! single use and expire, sign-in lockout, bad input that changes nothing, and no child's
//! name in titles or URLs.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use weft_tests::{Cluster, TestNode};

/// One HTTP response, body as text.
struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn location(&self) -> String {
        self.header("location")
    }

    /// The value of the first hidden input named `name`.
    fn hidden(&self, name: &str) -> String {
        let needle = format!("name=\"{name}\" value=\"");
        self.body
            .split(&needle)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string()
    }

    fn title(&self) -> String {
        self.body
            .split("<title>")
            .nth(1)
            .and_then(|t| t.split("</title>").next())
            .unwrap_or_default()
            .to_string()
    }
}

/// A minimal browser: HTTPS with the test CA, one session cookie, no redirects followed.
#[derive(Clone)]
struct Browser {
    addr: std::net::SocketAddr,
    server_name: String,
    tls: Arc<rustls::ClientConfig>,
    cookie: Option<String>,
    /// Every URL path this browser asked for or was sent to.
    paths: Vec<String>,
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Browser {
    fn new(node: &TestNode) -> anyhow::Result<Self> {
        weft_node::server::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&node.tls.ca)?;
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let c: rustls::pki_types::CertificateDer = c?;
            roots.add(c)?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr: node.family_addr(),
            server_name: node.agency.to_string(),
            tls: Arc::new(tls),
            cookie: None,
            paths: vec![],
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> anyhow::Result<Resp> {
        self.paths.push(path.to_string());
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.server_name, self.addr.port()))
            .header("accept-language", "en");
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c.as_str());
        }
        let body = match form {
            Some(pairs) => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                pairs
                    .iter()
                    .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                    .collect::<Vec<_>>()
                    .join("&")
            }
            None => String::new(),
        };
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
        for v in headers.get_all("set-cookie") {
            let v = v.to_str()?;
            if let Some(pair) = v.split(';').next() {
                if pair.starts_with("__Host-weft-family=") {
                    self.cookie = Some(pair.to_string());
                }
            }
        }
        if let Some(l) = headers.get("location").and_then(|l| l.to_str().ok()) {
            self.paths.push(l.to_string());
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<Resp> {
        self.send("GET", path, None).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> anyhow::Result<Resp> {
        self.send("POST", path, Some(form)).await
    }

    /// Posts a form with this session's CSRF token (read from `page`).
    async fn submit(
        &mut self,
        page: &str,
        path: &str,
        form: &[(&str, &str)],
    ) -> anyhow::Result<Resp> {
        let csrf = self.get(page).await?.hidden("csrf");
        anyhow::ensure!(!csrf.is_empty(), "no CSRF token on {page}");
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(form);
        self.post(path, &all).await
    }
}

fn token_of(link: &str) -> String {
    link.rsplit('/').next().unwrap_or_default().to_string()
}

/// Accepts an invitation in a fresh browser; returns the signed-in browser.
async fn accept(node: &TestNode, link: &str, user: &str, pass: &str) -> anyhow::Result<Browser> {
    let mut b = Browser::new(node)?;
    let token = token_of(link);
    let page = b.get(&format!("/invite/{token}")).await?;
    anyhow::ensure!(page.status == 200, "invite page: {}", page.status);
    let csrf = page.hidden("csrf");
    let r = b
        .post(
            "/invite",
            &[
                ("csrf", &csrf),
                ("token", &token),
                ("user", user),
                ("passphrase", pass),
                ("again", pass),
            ],
        )
        .await?;
    anyhow::ensure!(r.status == 303, "accept: {} {}", r.status, r.body);
    Ok(b)
}

async fn one_node() -> anyhow::Result<Cluster> {
    Cluster::builder().agencies(["school.test"]).start().await
}

async fn goal_count(node: &TestNode, plan: &str) -> anyhow::Result<usize> {
    let goals = node.section(&node.coordinator_token, plan, "goals").await?;
    Ok(goals
        .get("goals")
        .and_then(|g| g.as_object())
        .map_or(0, |m| m.len()))
}

async fn consent_count(node: &TestNode, plan: &str) -> anyhow::Result<usize> {
    Ok(node
        .consents(&node.coordinator_token)
        .await?
        .list(weft_tests::weft_proto::v1::ListConsentsRequest {
            plan_id: plan.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .consents
        .len())
}

async fn audit_details(node: &TestNode, action: &str) -> anyhow::Result<Vec<String>> {
    let entries = node
        .node()
        .service()
        .store()
        .audit_entries(0, 100_000)
        .await?;
    Ok(entries
        .into_iter()
        .flatten()
        .filter(|e| e.draft.action.as_str() == action)
        .map(|e| format!("{:?} {}", e.draft.outcome, e.draft.detail))
        .collect())
}

#[tokio::test]
async fn pages_carry_security_headers_and_strict_session_cookies() -> anyhow::Result<()> {
    let cluster = one_node().await?;
    let school = cluster.node("school.test");
    let mut b = Browser::new(school)?;
    let r = b.get("/signin").await?;
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(
        !csp.contains("script-src"),
        "no scripts are allowed at all: {csp}"
    );
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    assert_eq!(r.header("referrer-policy"), "no-referrer");
    assert!(r
        .header("strict-transport-security")
        .starts_with("max-age="));
    assert_eq!(r.header("x-frame-options"), "DENY");
    assert_eq!(r.header("cache-control"), "no-store");
    let cookie = r.header("set-cookie");
    assert!(cookie.starts_with("__Host-weft-family="), "{cookie}");
    for flag in [
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(cookie.contains(flag), "{flag} missing in {cookie}");
    }
    assert!(!cookie.contains("Domain="), "{cookie}");
    // No inline script or style anywhere: the page works without JavaScript.
    assert!(
        !r.body.contains("<script") && !r.body.contains("style="),
        "{}",
        r.body
    );
    // Every control has a label.
    assert!(r.body.contains("<label for=\"user\"") && r.body.contains("<label for=\"passphrase\""));
    // Errors carry the headers too.
    let nf = b.get("/no-such-page").await?;
    assert_eq!(nf.status, 404);
    assert!(nf
        .header("content-security-policy")
        .contains("frame-ancestors 'none'"));
    cluster.stop().await
}

#[tokio::test]
async fn an_invitation_works_once_and_not_after_72_hours() -> anyhow::Result<()> {
    let cluster = one_node().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Ines", "Invitee").await?;
    let link = school
        .invite_guardian(&plan, "Paula Invitee", "parent")
        .await?;
    assert!(
        link.starts_with(&format!("https://{}/invite/", school.family_addr())),
        "{link}"
    );
    // Only the token's hash is stored.
    let token = token_of(&link);
    assert!(school
        .node()
        .service()
        .store()
        .blocking()
        .trees_with_key_containing(token.as_bytes())?
        .is_empty());

    // A bad passphrase changes nothing: the invitation is still usable.
    let mut b = Browser::new(school)?;
    let page = b.get(&format!("/invite/{token}")).await?;
    assert_eq!(page.status, 200);
    assert!(!page.title().contains("Paula") && !page.title().contains("Ines"));
    let csrf = page.hidden("csrf");
    let short = b
        .post(
            "/invite",
            &[
                ("csrf", &csrf),
                ("token", &token),
                ("user", "paula"),
                ("passphrase", "short"),
                ("again", "short"),
            ],
        )
        .await?;
    assert_eq!(short.status, 400);
    assert!(
        short.body.contains("12 to 256 characters"),
        "{}",
        short.body
    );
    for (user, again, message) in [
        ("paula", "a long enough passphrasE", "not the same"),
        ("coordinator", "a long enough passphrase", "is taken"),
        (
            "Paula Invitee",
            "a long enough passphrase",
            "may have only lowercase",
        ),
    ] {
        let r = b
            .post(
                "/invite",
                &[
                    ("csrf", &csrf),
                    ("token", &token),
                    ("user", user),
                    ("passphrase", "a long enough passphrase"),
                    ("again", again),
                ],
            )
            .await?;
        assert_eq!(r.status, 400, "{user}");
        assert!(r.body.contains(message), "{message}: {}", r.body);
    }

    let mut b = accept(school, &link, "paula", "a long enough passphrase").await?;
    assert_eq!(b.get("/plan").await?.status, 200);

    // Reused: refused, on the page and on the form.
    let mut other = Browser::new(school)?;
    assert_eq!(other.get(&format!("/invite/{token}")).await?.status, 410);
    let csrf = other.get("/signin").await?.hidden("csrf");
    let reuse = other
        .post(
            "/invite",
            &[
                ("csrf", &csrf),
                ("token", &token),
                ("user", "mallory"),
                ("passphrase", "another long passphrase"),
                ("again", "another long passphrase"),
            ],
        )
        .await?;
    assert_eq!(reuse.status, 410);
    assert!(school.node().service().guardian_caller("mallory").is_none());

    // Expired: 72 hours later a fresh invitation no longer works.
    let late = school
        .invite_guardian(&plan, "Late Invitee", "guardian")
        .await?;
    school.clock.advance(Duration::from_secs(72 * 3600 + 60));
    let mut c = Browser::new(school)?;
    assert_eq!(
        c.get(&format!("/invite/{}", token_of(&late))).await?.status,
        410
    );
    let csrf = c.get("/signin").await?.hidden("csrf");
    let expired = c
        .post(
            "/invite",
            &[
                ("csrf", &csrf),
                ("token", &token_of(&late)),
                ("user", "late"),
                ("passphrase", "a long enough passphrase"),
                ("again", "a long enough passphrase"),
            ],
        )
        .await?;
    assert_eq!(expired.status, 410);
    assert!(school.node().service().guardian_caller("late").is_none());

    let accepts = audit_details(school, "guardian_accept").await?;
    assert!(accepts.iter().any(|d| d.starts_with("Ok")), "{accepts:?}");
    assert!(
        accepts.iter().any(|d| d.contains("invite_used")),
        "{accepts:?}"
    );
    assert!(
        accepts.iter().any(|d| d.contains("invite_expired")),
        "{accepts:?}"
    );
    assert_eq!(audit_details(school, "guardian_invite").await?.len(), 2);
    // The session survives; the guardian signs in again later with the passphrase.
    assert_eq!(b.get("/plan").await?.status, 200);
    cluster.stop().await
}

#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = one_node().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Carla", "Csrf").await?;
    let link = school.invite_guardian(&plan, "Rosa Csrf", "parent").await?;
    let mut b = accept(school, &link, "rosa", "a long enough passphrase").await?;
    let goal = [
        ("plan", plan.as_str()),
        ("text", "Walk to school"),
        ("domain", "health"),
        ("horizon", "short"),
    ];
    let missing = b.post("/goals", &goal).await?;
    assert_eq!(missing.status, 403);
    let mut wrong = vec![("csrf", "0".repeat(64))];
    wrong.extend(goal.iter().map(|(k, v)| (*k, v.to_string())));
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(b.post("/goals", &wrong).await?.status, 403);
    // Another session's token does not do either.
    let mut other = Browser::new(school)?;
    let foreign = other.get("/signin").await?.hidden("csrf");
    let mut with_foreign = vec![("csrf", foreign.as_str())];
    with_foreign.extend_from_slice(&goal);
    assert_eq!(b.post("/goals", &with_foreign).await?.status, 403);
    assert_eq!(goal_count(school, &plan).await?, 0);
    // Grants and sign-out are guarded the same way.
    let grant = [
        ("plan", plan.as_str()),
        ("agency", "clinic.test"),
        ("sections", "goals"),
        ("access", "read"),
        ("purpose", "care_coordination"),
        ("until", "2099-06-30"),
    ];
    assert_eq!(b.post("/sharing/grant", &grant).await?.status, 403);
    assert_eq!(b.post("/signout", &[]).await?.status, 403);
    assert_eq!(consent_count(school, &plan).await?, 0);

    // With the token, the goal is added as the guardian, audited.
    let ok = b.submit("/plan", "/goals", &goal).await?;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(goal_count(school, &plan).await?, 1);
    let writes = school
        .node()
        .service()
        .store()
        .audit_entries(0, 100_000)
        .await?;
    assert!(writes
        .into_iter()
        .flatten()
        .any(|e| e.draft.action.as_str() == "write" && e.draft.user == "rosa"));
    cluster.stop().await
}

#[tokio::test]
async fn another_guardians_session_cannot_reach_this_plan() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .agencies(["school.test", "clinic.test"])
        .start()
        .await?;
    let school = cluster.node("school.test");
    let plan_a = school.create_plan("Amaranth", "Alpha").await?;
    let plan_b = school.create_plan("Bartholomew", "Beta").await?;
    let link_a = school
        .invite_guardian(&plan_a, "Ana Alpha", "parent")
        .await?;
    let link_b = school
        .invite_guardian(&plan_b, "Ben Beta", "parent")
        .await?;
    let mut a = accept(school, &link_a, "ana", "a long enough passphrase").await?;
    let mut b = accept(school, &link_b, "ben", "another long passphrase").await?;

    let page = b.get("/plan").await?;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Bartholomew") && !page.body.contains("Amaranth"));

    // Choosing, writing to or sharing the other child's plan: not found, nothing changed.
    let choose = b.submit("/plan", "/plans", &[("plan", &plan_a)]).await?;
    assert_eq!(choose.status, 404);
    let goal = b
        .submit(
            "/plan",
            "/goals",
            &[
                ("plan", &plan_a),
                ("text", "Sneaky goal"),
                ("domain", "other"),
                ("horizon", "short"),
            ],
        )
        .await?;
    assert!(matches!(goal.status, 403 | 404), "{}", goal.status);
    let grant = b
        .submit(
            "/sharing",
            "/sharing/grant",
            &[
                ("plan", &plan_a),
                ("agency", "clinic.test"),
                ("sections", "health"),
                ("access", "read"),
                ("purpose", "referral"),
                ("until", "2099-01-01"),
            ],
        )
        .await?;
    assert!(matches!(grant.status, 403 | 404), "{}", grant.status);
    assert_eq!(goal_count(school, &plan_a).await?, 0);
    assert_eq!(consent_count(school, &plan_a).await?, 0);

    // A consent of plan A cannot be revoked from B's session either.
    let ok = a
        .submit(
            "/sharing",
            "/sharing/grant",
            &[
                ("plan", &plan_a),
                ("agency", "clinic.test"),
                ("sections", "goals"),
                ("access", "read"),
                ("purpose", "care_coordination"),
                ("until", "2099-01-01"),
            ],
        )
        .await?;
    assert_eq!(ok.status, 303, "{}", ok.body);
    let consent = school
        .consents(&school.coordinator_token)
        .await?
        .list(weft_tests::weft_proto::v1::ListConsentsRequest {
            plan_id: plan_a.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .consents
        .remove(0);
    assert_eq!(consent.method, "e_signature");
    assert_eq!(consent.grantor_name, "Ana Alpha");
    assert_eq!(consent.relationship, "parent");
    assert_eq!(consent.recorded_by, "school.test/ana");
    assert_eq!(consent.signer, "school.test");
    for (plan, expect) in [(&plan_a, 404), (&plan_b, 404)] {
        let r = b
            .submit(
                "/sharing",
                "/sharing/revoke",
                &[("plan", plan), ("consent", &consent.consent_id)],
            )
            .await?;
        assert_eq!(r.status, expect);
    }
    let still = school
        .consents(&school.coordinator_token)
        .await?
        .get(weft_tests::weft_proto::v1::GetConsentRequest {
            consent_id: consent.consent_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(still.state, "active");

    // B's pages never show A's child.
    for p in ["/plan", "/sharing", "/seen"] {
        let r = b.get(p).await?;
        assert_eq!(r.status, 200);
        assert!(!r.body.contains("Amaranth"), "{p}");
    }
    let denied = audit_details(school, "write").await?;
    assert!(
        denied.iter().any(|d| d.contains("guardian_binding")),
        "{denied:?}"
    );
    cluster.stop().await
}

#[tokio::test]
async fn wrong_passphrases_lock_sign_in_for_a_while() -> anyhow::Result<()> {
    let cluster = one_node().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Lola", "Lock").await?;
    let link = school.invite_guardian(&plan, "Lu Lock", "guardian").await?;
    accept(school, &link, "lu", "the right passphrase").await?;
    let mut b = Browser::new(school)?;
    let mut statuses = Vec::new();
    for _ in 0..weft_node::service::family::MAX_FAILURES {
        let r = b
            .submit(
                "/signin",
                "/signin",
                &[("user", "lu"), ("passphrase", "a wrong passphrase")],
            )
            .await?;
        statuses.push(r.status);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    // Locked: even the right passphrase is refused for now.
    let locked = b
        .submit(
            "/signin",
            "/signin",
            &[("user", "lu"), ("passphrase", "the right passphrase")],
        )
        .await?;
    assert_eq!(locked.status, 429);
    assert!(locked.body.contains("Too many attempts"));
    // An unknown name is refused the same way as a wrong passphrase.
    let unknown = b
        .submit(
            "/signin",
            "/signin",
            &[("user", "nobody"), ("passphrase", "whatever it is")],
        )
        .await?;
    assert_eq!(unknown.status, 401);
    // After the lockout it opens again.
    school
        .clock
        .advance(weft_node::service::family::LOCKOUT + Duration::from_secs(1));
    let ok = b
        .submit(
            "/signin",
            "/signin",
            &[("user", "lu"), ("passphrase", "the right passphrase")],
        )
        .await?;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.location(), "/plan");
    assert_eq!(b.get("/plan").await?.status, 200);
    let sign_ins = audit_details(school, "sign_in").await?;
    assert!(
        sign_ins.iter().any(|d| d.contains("locked for")),
        "{sign_ins:?}"
    );
    assert!(
        sign_ins.iter().any(|d| d == "Denied locked"),
        "{sign_ins:?}"
    );
    assert!(
        sign_ins.iter().any(|d| d == "Denied unknown_user"),
        "{sign_ins:?}"
    );
    assert!(sign_ins.iter().any(|d| d.starts_with("Ok")), "{sign_ins:?}");
    cluster.stop().await
}

#[tokio::test]
async fn bad_input_is_explained_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .agencies(["school.test", "clinic.test"])
        .start()
        .await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Bea", "Bad").await?;
    let link = school.invite_guardian(&plan, "Bo Bad", "parent").await?;
    let mut b = accept(school, &link, "bo", "a long enough passphrase").await?;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("agency", "evil.test"),
                ("sections", "goals"),
                ("access", "read"),
                ("purpose", "referral"),
                ("until", "2099-01-01"),
            ],
            "Choose an agency",
        ),
        (
            &[
                ("agency", "clinic.test"),
                ("access", "read"),
                ("purpose", "referral"),
                ("until", "2099-01-01"),
            ],
            "at least one part",
        ),
        (
            &[
                ("agency", "clinic.test"),
                ("sections", "goals"),
                ("access", "read"),
                ("purpose", "referral"),
                ("until", "2001-01-01"),
            ],
            "after today",
        ),
        (
            &[
                ("agency", "clinic.test"),
                ("sections", "goals"),
                ("access", "own"),
                ("purpose", "fun"),
                ("until", "30/06/2099"),
            ],
            "year-month-day",
        ),
    ];
    for (form, message) in cases {
        let mut all = vec![("plan", plan.as_str())];
        all.extend_from_slice(form);
        for path in ["/sharing/review", "/sharing/grant"] {
            let r = b.submit("/sharing", path, &all).await?;
            assert_eq!(r.status, 400, "{path} {form:?}");
            assert!(r.body.contains(message), "{path}: `{message}` missing");
            assert!(r.body.contains("role=\"alert\""));
        }
    }
    let empty_goal = b
        .submit(
            "/plan",
            "/goals",
            &[
                ("plan", &plan),
                ("text", "  "),
                ("domain", "health"),
                ("horizon", "short"),
            ],
        )
        .await?;
    assert_eq!(empty_goal.status, 400);
    assert_eq!(consent_count(school, &plan).await?, 0);
    assert_eq!(goal_count(school, &plan).await?, 0);
    cluster.stop().await
}

#[tokio::test]
async fn titles_and_urls_never_carry_a_childs_name() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .agencies(["school.test", "clinic.test"])
        .start()
        .await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Zebulonia", "Quixotica").await?;
    let link = school
        .invite_guardian(&plan, "Yolanda Quixotica", "parent")
        .await?;
    let mut b = accept(school, &link, "yolanda", "a long enough passphrase").await?;
    let mut titles = Vec::new();
    for p in ["/plan", "/sharing", "/seen"] {
        let r = b.get(p).await?;
        assert_eq!(r.status, 200);
        titles.push(r.title());
    }
    let review = b
        .submit(
            "/sharing",
            "/sharing/review",
            &[
                ("plan", &plan),
                ("agency", "clinic.test"),
                ("sections", "goals"),
                ("access", "read"),
                ("purpose", "care_coordination"),
                ("until", "2099-06-30"),
            ],
        )
        .await?;
    assert_eq!(review.status, 200);
    assert!(
        review
            .body
            .contains("will be able to read Goals until 30 June 2099 for care coordination"),
        "{}",
        review.body
    );
    titles.push(review.title());
    let granted = b
        .submit(
            "/sharing",
            "/sharing/grant",
            &[
                ("plan", &plan),
                ("agency", "clinic.test"),
                ("sections", "goals"),
                ("access", "read"),
                ("purpose", "care_coordination"),
                ("until", "2099-06-30"),
            ],
        )
        .await?;
    assert_eq!(granted.status, 303);
    let plan_page = b.get("/plan").await?;
    assert!(
        plan_page.body.contains("Zebulonia"),
        "positive control: the page does show the plan"
    );
    for t in &titles {
        for name in ["Zebulonia", "Quixotica", "Yolanda"] {
            assert!(!t.contains(name), "title `{t}` names {name}");
        }
    }
    for p in &b.paths {
        for name in ["Zebulonia", "Quixotica", "Yolanda"] {
            assert!(!p.contains(name), "URL {p} names {name}");
        }
        assert!(!p.contains(&plan), "URL {p} names the plan");
    }
    // Spanish, from the switch.
    let es = b
        .submit("/plan", "/lang", &[("lang", "es"), ("back", "/sharing")])
        .await?;
    assert_eq!(es.location(), "/sharing");
    let page = b.get("/sharing").await?;
    assert!(page.body.contains("lang=\"es\"") && page.body.contains("Quién puede ver qué"));
    cluster.stop().await
}

#[tokio::test]
async fn only_coordinators_and_admins_invite_and_only_for_plans_of_this_node() -> anyhow::Result<()>
{
    let cluster = one_node().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Ivo", "Inviter").await?;
    let caseworker = school.add_user("cw", "caseworker", &[]).await?;
    let refused = school
        .users(&caseworker)
        .await?
        .invite_guardian(weft_tests::weft_proto::v1::InviteGuardianRequest {
            plan_id: plan.clone(),
            name: "Some Parent".into(),
            relationship: "parent".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let bad = school
        .users(&school.coordinator_token)
        .await?
        .invite_guardian(weft_tests::weft_proto::v1::InviteGuardianRequest {
            plan_id: plan.clone(),
            name: "Some Parent".into(),
            relationship: "neighbour".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("relationship"), "{}", bad.message());
    let unknown = school
        .users(&school.coordinator_token)
        .await?
        .invite_guardian(weft_tests::weft_proto::v1::InviteGuardianRequest {
            plan_id: uuid::Uuid::new_v4().to_string(),
            name: "Some Parent".into(),
            relationship: "parent".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert_eq!(
        audit_details(school, "guardian_invite").await?,
        vec!["Denied role".to_string()]
    );
    cluster.stop().await
}

#[tokio::test]
async fn many_failed_sign_ins_from_one_address_are_throttled() -> anyhow::Result<()> {
    let cluster = one_node().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Tara", "Throttle").await?;
    let link = school
        .invite_guardian(&plan, "Tom Throttle", "parent")
        .await?;
    accept(school, &link, "tom", "the right passphrase").await?;
    let mut b = Browser::new(school)?;
    let csrf = b.get("/signin").await?.hidden("csrf");
    // Spraying many sign-in names from one address: each name stays under its own lockout.
    for i in 0..weft_node::family::ADDRESS_FAILURES {
        let user = format!("guess{i}");
        let r = b
            .post(
                "/signin",
                &[
                    ("csrf", &csrf),
                    ("user", &user),
                    ("passphrase", "a guessed passphrase"),
                ],
            )
            .await?;
        assert_eq!(r.status, 401);
    }
    let r = b
        .post(
            "/signin",
            &[
                ("csrf", &csrf),
                ("user", "tom"),
                ("passphrase", "the right passphrase"),
            ],
        )
        .await?;
    assert_eq!(r.status, 429);
    assert!(r.body.contains("Too many attempts from your connection"));
    cluster.stop().await
}

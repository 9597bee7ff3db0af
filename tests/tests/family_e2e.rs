//! The family page end to end, in a real headless Chromium driven over WebDriver
//! (`chromedriver`), against real nodes over real mutual TLS: a guardian accepts an
//! invitation, signs in, grants the clinic `goals`, the goals arrive at the clinic, the
//! guardian revokes, and the clinic's purge receipt appears on the page.
//!
//! Screenshots of every page are saved under `target/e2e/` for review. The test fails (it
//! does not skip) when `chromedriver` or Chromium is missing: `.ci/run` installs them.

use std::path::PathBuf;
use std::process::Stdio;

use fantoccini::{Client, ClientBuilder, Locator};
use weft_tests::{eventually, Cluster, DEADLINE};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// `chromedriver` on a free port, killed when dropped.
struct Driver {
    child: tokio::process::Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_driver() -> anyhow::Result<Driver> {
    for bin in [CHROMEDRIVER, CHROMIUM] {
        anyhow::ensure!(
            std::path::Path::new(bin).is_file(),
            "{bin} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
        );
    }
    let port = weft_tests::free_addr()?.port();
    let child = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok(Driver { child, port })
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> anyhow::Result<Client> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--ignore-certificate-errors",
                "--disable-extensions", "--disable-renderer-backgrounding",
                "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
                "--lang=en-US", "--window-size=1100,1400",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.port);
    eventually("chromedriver to start a session", DEADLINE, || {
        let caps = caps.clone();
        let url = url.clone();
        async move {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            Ok(ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&url)
                .await
                .ok())
        }
    })
    .await
}

fn shots_dir() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("e2e");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn shot(c: &Client, name: &str) -> anyhow::Result<()> {
    let png = c.screenshot().await?;
    std::fs::write(shots_dir()?.join(format!("{name}.png")), png)?;
    Ok(())
}

async fn fill(c: &Client, id: &str, text: &str) -> anyhow::Result<()> {
    let e = c.find(Locator::Id(id)).await?;
    e.clear().await?;
    e.send_keys(text).await?;
    Ok(())
}

async fn click(c: &Client, css: &str) -> anyhow::Result<()> {
    let target = c.find(Locator::Css(css)).await?;
    match target.click().await {
        Ok(()) => Ok(()),
        // chromedriver may report the navigation the click started as an aborted wait; what
        // the click did is checked by the caller's next wait.
        Err(e) if e.to_string().contains("aborted by navigation") => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("clicking {css}"))),
    }
}

async fn body_text(c: &Client) -> anyhow::Result<String> {
    Ok(c.find(Locator::Css("main")).await?.text().await?)
}

async fn path(c: &Client) -> anyhow::Result<String> {
    Ok(c.current_url().await?.path().to_string())
}

/// Waits until the browser shows `expected` (a click may return before the navigation ends).
async fn wait_path(c: &Client, expected: &str) -> anyhow::Result<()> {
    eventually(&format!("the browser at {expected}"), DEADLINE, || async {
        let there = path(c).await? == expected;
        let loaded = there && c.find(Locator::Css("main h1")).await.is_ok();
        Ok(loaded.then_some(()))
    })
    .await
}

#[tokio::test]
async fn a_guardian_grants_and_revokes_in_a_real_browser() -> anyhow::Result<()> {
    let driver = start_driver().await?;
    let cluster = Cluster::builder()
        .agencies(["school.test", "clinic.test"])
        .start()
        .await?;
    let school = cluster.node("school.test");
    let clinic = cluster.node("clinic.test");
    let plan = school.create_plan("Maya", "Example").await?;
    school
        .goals(&school.coordinator_token)
        .await?
        .add_goal(weft_tests::weft_proto::v1::AddGoalRequest {
            plan_id: plan.clone(),
            domain: "academic".into(),
            text: "Read 20 minutes every school day".into(),
            horizon: "short".into(),
            target_date: String::new(),
        })
        .await?;
    let link = school
        .invite_guardian(&plan, "Rosa Example", "parent")
        .await?;
    let profile = tempfile::tempdir()?;
    let c = browser(&driver, profile.path()).await?;
    let result = run(&c, school, clinic, &plan, &link).await;
    if result.is_err() {
        let _ = shot(&c, "failure").await;
    }
    c.close().await?;
    result?;
    cluster.stop().await
}

async fn run(
    c: &Client,
    school: &weft_tests::TestNode,
    clinic: &weft_tests::TestNode,
    plan: &str,
    link: &str,
) -> anyhow::Result<()> {
    let base = format!("https://{}", school.family_addr());

    // Accept the invitation: choose a sign-in name and a passphrase.
    c.goto(link).await?;
    shot(c, "01-invite").await?;
    assert_eq!(c.title().await?, "Set up your access · Family page");
    fill(c, "user", "rosa").await?;
    fill(c, "passphrase", "a long and memorable passphrase").await?;
    fill(c, "again", "a long and memorable passphrase").await?;
    click(c, "main button[type=submit]").await?;
    wait_path(c, "/plan").await?;
    let text = body_text(c).await?;
    assert!(text.contains("Your access is ready"), "{text}");
    assert!(text.contains("Read 20 minutes every school day"), "{text}");
    shot(c, "02-plan").await?;

    // Sign out, and sign in again with the passphrase.
    click(c, "form[action='/signout'] button").await?;
    wait_path(c, "/signin").await?;
    fill(c, "user", "rosa").await?;
    fill(c, "passphrase", "a long and memorable passphrase").await?;
    shot(c, "03-signin").await?;
    click(c, "main button[type=submit]").await?;
    wait_path(c, "/plan").await?;

    // Add a comment to the goal, as a family would.
    fill(c, "note-0", "We read together every evening").await?;
    click(c, "form[action='/goals/comment'] button").await?;
    // Same path before and after: wait for the page that says so.
    eventually("the comment on the plan page", DEADLINE, || async {
        let text = body_text(c).await.unwrap_or_default();
        Ok((text.contains("Your comment was added.")
            && text.contains("We read together every evening"))
        .then_some(()))
    })
    .await?;

    // Grant the clinic `goals`, with a confirmation step that restates it.
    c.goto(&format!("{base}/sharing")).await?;
    shot(c, "04-sharing").await?;
    click(c, "input[name=agency][value='clinic.test']").await?;
    click(c, "input[name=sections][value=goals]").await?;
    click(c, "input[name=access][value=read]").await?;
    c.find(Locator::Css("#purpose option[value=care_coordination]"))
        .await?
        .click()
        .await?;
    // Chromium's date field takes the digits in the locale's order (en-US: month day year).
    c.find(Locator::Id("until"))
        .await?
        .send_keys("06302027")
        .await?;
    click(c, "form[action='/sharing/review'] button[type=submit]").await?;
    wait_path(c, "/sharing/review").await?;
    let sentence = c.find(Locator::Id("sentence")).await?.text().await?;
    assert_eq!(
        sentence,
        "clinic.test will be able to read Goals until 30 June 2027 for care coordination."
    );
    shot(c, "05-review").await?;
    click(c, "form[action='/sharing/grant'] button").await?;
    wait_path(c, "/sharing").await?;
    let text = body_text(c).await?;
    assert!(text.contains("Your consent was recorded."), "{text}");
    assert!(
        text.contains("Read until 30 June 2027 (care coordination)"),
        "{text}"
    );
    shot(c, "06-granted").await?;

    // The goals arrive at the clinic's node.
    eventually("the goals at the clinic", DEADLINE, || async {
        Ok(clinic
            .section(&clinic.coordinator_token, plan, "goals")
            .await
            .ok()
            .filter(|g| g.to_string().contains("We read together every evening")))
    })
    .await?;

    // Revoke in one step with a confirmation; the purge receipt then shows on the page.
    click(c, "form[action='/sharing/revoke/review'] button").await?;
    wait_path(c, "/sharing/revoke/review").await?;
    shot(c, "07-revoke-confirm").await?;
    assert!(body_text(c)
        .await?
        .contains("clinic.test will no longer see Goals."));
    click(c, "form[action='/sharing/revoke'] button").await?;
    wait_path(c, "/sharing").await?;
    let text = eventually("the purge receipt on the page", DEADLINE, || async {
        c.refresh().await?;
        let text = body_text(c).await?;
        Ok(text.contains("Deletion confirmed").then_some(text))
    })
    .await?;
    assert!(
        text.contains("Deletion confirmed: clinic.test, Goals"),
        "{text}"
    );
    shot(c, "08-revoked-with-receipt").await?;
    eventually("the clinic to lose the goals", DEADLINE, || async {
        Ok(clinic
            .section(&clinic.coordinator_token, plan, "goals")
            .await
            .is_err()
            .then_some(()))
    })
    .await?;

    // Who has seen what: the clinic's disclosures and the receipt.
    c.goto(&format!("{base}/seen")).await?;
    let text = body_text(c).await?;
    assert!(text.contains("received a copy"), "{text}");
    assert!(text.contains("Deletion receipts"), "{text}");
    assert!(c
        .find(Locator::Css("main table:last-of-type tbody tr"))
        .await
        .is_ok());
    shot(c, "09-seen").await?;

    // The same page in Spanish, from the switch.
    click(c, "form[action='/lang'] button").await?;
    eventually("the page in Spanish", DEADLINE, || async {
        Ok((c.title().await? == "Quién ha visto qué · Página para familias").then_some(()))
    })
    .await?;
    shot(c, "10-seen-es").await?;
    Ok(())
}

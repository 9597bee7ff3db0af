//! The family page's HTML, as maud templates: everything interpolated is escaped.
//!
//! Pages are plain HTML forms that work without JavaScript (there is none), with one `<h1>`
//! per page, a label on every control, a skip link, error summaries announced with
//! `role="alert"`, and a style sheet that reads on a phone. Page titles are fixed texts:
//! they never carry a child's or a guardian's name.

use maud::{html, Markup, DOCTYPE};

use super::i18n::{Lang, Texts};
use super::session::Flash;

/// The style sheet, served as `/style.css` (the CSP allows no inline style).
pub const STYLE: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 1.0625rem/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b; background: #fff; }
a { color: #0b4fb3; }
a:focus-visible, button:focus-visible, input:focus-visible, select:focus-visible, textarea:focus-visible, summary:focus-visible {
  outline: 3px solid #1b1b1b; outline-offset: 2px; }
.skip { position: absolute; left: -9999px; }
.skip:focus { left: 1rem; top: 1rem; background: #fff; padding: .5rem; z-index: 2; }
header { background: #0f3d5e; color: #fff; padding: .75rem 1rem; }
header a, header button.link { color: #fff; }
.bar { display: flex; flex-wrap: wrap; gap: .5rem 1.25rem; align-items: center; justify-content: space-between; max-width: 60rem; margin: 0 auto; }
.brand { font-weight: 700; margin: 0; }
nav ul { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: .25rem 1rem; }
nav a[aria-current="page"] { font-weight: 700; text-decoration-thickness: 3px; }
.tools { display: flex; gap: .75rem; align-items: center; }
.tools form { margin: 0; }
main { max-width: 60rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.75rem; line-height: 1.2; }
h2 { font-size: 1.3rem; margin-top: 2rem; border-bottom: 1px solid #c9c9c9; padding-bottom: .25rem; }
h3 { font-size: 1.1rem; }
.meta, .hint { color: #4a4a4a; font-size: .95rem; }
dl { display: grid; grid-template-columns: minmax(8rem, 14rem) 1fr; gap: .25rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; }
@media (max-width: 36rem) { dl { grid-template-columns: 1fr; } dd { margin-bottom: .5rem; } }
.notice { border-left: 6px solid #1d7a3a; background: #eef7f0; padding: .75rem 1rem; }
.problem { border: 3px solid #b3261e; padding: .75rem 1rem; }
.problem h2 { margin-top: 0; border: 0; color: #b3261e; }
.error { color: #b3261e; font-weight: 600; display: block; }
label, legend { font-weight: 600; display: block; margin-top: 1rem; }
fieldset { border: 1px solid #c9c9c9; margin: 1rem 0; padding: .5rem 1rem 1rem; }
fieldset label { font-weight: 400; margin-top: .35rem; }
input[type=text], input[type=password], input[type=date], select, textarea {
  font: inherit; width: 100%; max-width: 32rem; padding: .5rem; border: 2px solid #4a4a4a; border-radius: 4px; background: #fff; color: #1b1b1b; }
input[type=checkbox], input[type=radio] { width: 1.25rem; height: 1.25rem; vertical-align: middle; margin-right: .4rem; }
textarea { min-height: 5rem; display: block; }
select, input[type=text], input[type=password], input[type=date] { display: block; }
button { font: inherit; font-weight: 600; padding: .6rem 1.2rem; margin-top: 1rem; border-radius: 4px; border: 2px solid #0b4fb3; background: #0b4fb3; color: #fff; cursor: pointer; }
button.secondary { background: #fff; color: #0b4fb3; }
button.danger { background: #b3261e; border-color: #b3261e; }
button.link { background: none; border: 0; padding: 0; margin: 0; text-decoration: underline; font-weight: 400; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
caption { text-align: left; font-weight: 600; padding-bottom: .5rem; }
th, td { border: 1px solid #c9c9c9; padding: .4rem .5rem; text-align: left; vertical-align: top; }
th { background: #f1f3f5; }
.sentence { font-size: 1.2rem; border-left: 6px solid #0f3d5e; padding: .75rem 1rem; background: #f1f5f9; }
.goal { border: 1px solid #c9c9c9; border-radius: 6px; padding: .5rem 1rem 1rem; margin: 1rem 0; }
.actions { display: flex; flex-wrap: wrap; gap: 1rem; align-items: baseline; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
"#;

/// What every page shows around its content.
pub struct Chrome<'a> {
    /// The language.
    pub lang: Lang,
    /// The session's CSRF token (for the language switch and sign-out forms).
    pub csrf: &'a str,
    /// Whether a guardian is signed in (the navigation shows).
    pub signed_in: bool,
    /// The path of this page (the language switch comes back here).
    pub here: &'a str,
    /// A one-time message.
    pub flash: Option<Flash>,
}

/// A hidden CSRF field.
pub fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

fn flash_text(t: &Texts, f: Flash) -> &'static str {
    match f {
        Flash::SignedOut => t.signed_out,
        Flash::InviteDone => t.invite_done,
        Flash::Granted => t.granted,
        Flash::Revoked => t.revoked,
        Flash::GoalAdded => t.goal_added,
        Flash::CommentAdded => t.comment_added,
    }
}

/// The page around `body`.
pub fn layout(c: &Chrome, title: &str, body: Markup) -> Markup {
    let t = c.lang.texts();
    let nav = [
        ("/plan", t.nav_plan),
        ("/sharing", t.nav_sharing),
        ("/seen", t.nav_seen),
    ];
    html! {
        (DOCTYPE)
        html lang=(c.lang.tag()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · " (t.brand) }
                link rel="stylesheet" href="/style.css";
            }
            body {
                a class="skip" href="#main" { (t.skip) }
                header {
                    div class="bar" {
                        p class="brand" { (t.brand) }
                        @if c.signed_in {
                            nav aria-label=(t.nav_label) {
                                ul {
                                    @for (href, label) in nav {
                                        li {
                                            @if href == c.here {
                                                a href=(href) aria-current="page" { (label) }
                                            } @else {
                                                a href=(href) { (label) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        div class="tools" {
                            form method="post" action="/lang" {
                                (csrf(c.csrf))
                                input type="hidden" name="back" value=(c.here);
                                input type="hidden" name="lang" value=(t.other_lang);
                                button class="link" type="submit" lang=(t.other_lang) aria-label=(format!("{}: {}", t.switch_to, t.other_lang_name)) {
                                    (t.other_lang_name)
                                }
                            }
                            @if c.signed_in {
                                form method="post" action="/signout" {
                                    (csrf(c.csrf))
                                    button class="link" type="submit" { (t.sign_out) }
                                }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    @if let Some(f) = c.flash {
                        p class="notice" role="status" { (flash_text(t, f)) }
                    }
                    (body)
                }
            }
        }
    }
}

/// An error summary at the top of a form.
pub fn problems(t: &Texts, errors: &[String]) -> Markup {
    html! {
        @if !errors.is_empty() {
            div class="problem" role="alert" tabindex="-1" {
                h2 { (t.there_is_a_problem) }
                ul { @for e in errors { li { (e) } } }
            }
        }
    }
}

/// A paragraph of plain text (line breaks kept).
pub fn text_block(s: &str) -> Markup {
    html! {
        @for (i, line) in s.lines().enumerate() {
            @if i > 0 { br; }
            (line)
        }
    }
}

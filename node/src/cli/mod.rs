//! The `weft` command line: the server commands (`serve`, `dev`, `config`, `pki`, offline
//! `user add --config`) and the client commands, which talk to a node over gRPC + TLS using
//! `WEFT_NODE`, `WEFT_CA` and `WEFT_TOKEN` (or `--node`, `--ca`, `--token`).

pub mod client;
pub mod consent;
pub mod dev;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Weft: federated success plans for integrated student support.
#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "Weft: one agency's node of a federation that keeps children's success plans",
    long_about = None
)]
pub struct Cli {
    /// Log format for server commands: `human` or `json`.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node from a config file.
    Serve {
        /// The node's TOML config (see deploy/weft.example.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a ready-to-use local federation: school.test, clinic.test and nutrition.test,
    /// peers over mutual TLS, a dev CA, a coordinator per agency and a sample plan shared
    /// with the clinic, the school's family page with a demo guardian invitation; writes
    /// DIR/<agency>.env for the client commands. Stops on Ctrl-C.
    Dev {
        /// Where to keep certificates, configs, data and env files.
        #[arg(long, default_value = "weft-dev")]
        dir: PathBuf,
        /// First port: client APIs on PORT, PORT+1, PORT+2; peer streams on PORT+10..12;
        /// metrics on PORT+20..22; the school's family page on PORT+30.
        #[arg(long, default_value_t = 7400)]
        port: u16,
    },
    /// Fill a stopped node's store with sample plans (benchmarks, demos, load tests): four
    /// ~1 KB sections each (profile, goals, services, family), written in batches, each plan
    /// consented to the given agencies. Refuses a store in use by a running node.
    Seed {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// How many plans to add (with `--only-for`, how many to number).
        #[arg(long)]
        plans: u64,
        /// An agency each plan is consented to (repeat for several).
        #[arg(long = "consent-to")]
        consent_to: Vec<String>,
        /// `read` or `read_write`.
        #[arg(long, default_value = "read")]
        access: String,
        /// The consents' last day (YYYY-MM-DD).
        #[arg(long, default_value = "2099-12-31")]
        until: String,
        /// Consent each plan to only MIN-MAX of the `--consent-to` agencies (spread evenly),
        /// e.g. `1-5`, instead of to all of them.
        #[arg(long, value_name = "MIN-MAX")]
        consent_pick: Option<String>,
        /// Add only the plans consented to this agency (repeat for several), with only
        /// their consents to it: the plans the whole set would deliver to it, as they are
        /// in the whole set (for benchmarks that measure the cost of the rest).
        #[arg(long = "only-for", value_name = "AGENCY")]
        only_for: Vec<String>,
    },
    /// Config files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Development certificates.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Plans and their sections.
    #[command(subcommand)]
    Plan(client::PlanCmd),
    /// Goals in a plan's `goals` section.
    #[command(subcommand)]
    Goal(client::GoalCmd),
    /// Referrals in a plan's `services` section.
    #[command(subcommand)]
    Referral(client::ReferralCmd),
    /// Consents: who may see which sections of a plan, for what, until when.
    #[command(subcommand)]
    Consent(consent::ConsentCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(client::AuditCmd),
    /// Users and their tokens.
    #[command(subcommand)]
    User(UserCmd),
    /// Families on the family page.
    #[command(subcommand)]
    Guardian(GuardianCmd),
    /// The node's identity and counters.
    Status(client::StatusArgs),
    /// Each peer agency: connected or not, last sync, how far behind, last error.
    Peers(client::JsonConn),
    /// Take a consistent online backup of a running node (admins): the whole store and the
    /// consent signing key, in one self-checking file written with mode 0600.
    Backup {
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        conn: client::JsonConn,
    },
    /// Restore a backup into a new, empty data directory (offline; the node is stopped),
    /// verify it and its audit chain.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to create (must not exist or be empty).
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate a config file and print every problem at once.
    Check {
        /// The config file.
        file: PathBuf,
        /// Do not require the certificate files it names to exist (an example config, or one
        /// written for another machine).
        #[arg(long)]
        skip_files: bool,
    },
}

#[derive(Subcommand, Debug)]
enum PkiCmd {
    /// Create a federation CA (ca.crt, ca.key) in the --out directory.
    InitCa {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a node certificate for an agency, signed by the CA in --ca.
    Issue {
        /// The CA directory (ca.crt, ca.key).
        #[arg(long)]
        ca: PathBuf,
        /// The agency id to put in the certificate's SAN.
        #[arg(long)]
        agency: String,
        /// Output directory (AGENCY.crt, AGENCY.key, ca.crt).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 397)]
        days: i64,
    },
}

#[derive(Subcommand, Debug)]
enum GuardianCmd {
    /// Invite a parent, guardian or eligible student (18+) to the family page for one plan
    /// (coordinators and admins). Prints a single-use link, valid for 72 hours, to give them
    /// in person or by a channel you trust; they open it and choose a passphrase.
    Invite(GuardianInviteArgs),
}

/// `weft guardian invite`
#[derive(Args, Debug)]
pub struct GuardianInviteArgs {
    /// The plan whose child they may see.
    pub plan: String,
    /// Their name, as it will stand on the consents they sign.
    #[arg(long)]
    pub name: String,
    /// parent | guardian | foster_parent | eligible_student | other
    #[arg(long)]
    pub relationship: String,
    #[command(flatten)]
    pub conn: client::JsonConn,
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Add a user and print its token (shown once). With --config, works offline on a
    /// stopped node's store (to create the first admin); otherwise asks the node.
    Add(UserAddArgs),
    /// List users.
    List(client::JsonConn),
    /// Show who the token belongs to.
    Whoami(client::JsonConn),
}

/// `weft user add`
#[derive(Args, Debug)]
pub struct UserAddArgs {
    /// The user's name: a-z, 0-9, '.', '_', '-'.
    pub name: String,
    /// admin | coordinator | caseworker | guardian | auditor
    #[arg(long)]
    pub role: String,
    /// Guardians: a plan whose child they may see (repeat for siblings).
    #[arg(long = "plan")]
    pub plans: Vec<String>,
    /// Staff of a partner agency working on this node: their agency id. What they may see
    /// is then decided by the family's consents.
    #[arg(long)]
    pub agency: Option<String>,
    /// Offline: the stopped node's config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub conn: client::JsonConn,
}

fn init_tracing(format: &str) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn")
    });
    // automerge opens INFO spans inside every document load, and the fmt layer formats their
    // arguments eagerly: with them on, tracing took a sixth of a busy node's CPU. They stay
    // off unless RUST_LOG names automerge.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("automerge")) {
        filter = filter.add_directive("automerge=warn".parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::server::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server_command = matches!(cli.command, Command::Serve { .. } | Command::Dev { .. });
    if server_command {
        init_tracing(&cli.log_format);
    }
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => serve(config).await,
        Command::Dev { dir, port } => dev::run(&dir, port).await,
        Command::Seed {
            config,
            plans,
            consent_to,
            access,
            until,
            consent_pick,
            only_for,
        } => {
            let pick = match consent_pick.as_deref() {
                None => None,
                Some(r) => {
                    let parsed = r
                        .split_once('-')
                        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                        .filter(|(a, b): &(usize, usize)| *a >= 1 && a <= b);
                    Some(parsed.ok_or_else(|| {
                        anyhow::anyhow!(
                            "--consent-pick: expected MIN-MAX with 1 <= MIN <= MAX, e.g. 1-5"
                        )
                    })?)
                }
            };
            seed(
                &config,
                plans,
                &consent_to,
                &access,
                &until,
                pick,
                &only_for,
            )
            .await
        }
        Command::Config(ConfigCmd::Check { file, skip_files }) => {
            match crate::config::Config::load_with(&file, !skip_files) {
                Ok(c) => {
                    let family = c
                        .family
                        .as_ref()
                        .map(|f| format!(", family page {}", f.listen))
                        .unwrap_or_default();
                    println!(
                        "{}: ok (agency {}, api {}{family})",
                        file.display(),
                        c.agency,
                        c.api_listen
                    );
                    Ok(())
                }
                Err(e) => {
                    for p in &e.problems {
                        eprintln!("{}: {p}", e.path);
                    }
                    anyhow::bail!("{} problem(s) in {}", e.problems.len(), e.path)
                }
            }
        }
        Command::Pki(PkiCmd::InitCa { out }) => {
            let path = crate::pki::init_ca(&out, "Weft federation CA")?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Pki(PkiCmd::Issue {
            ca,
            agency,
            out,
            days,
        }) => {
            let agency = crate::model::AgencyId::parse(&agency)?;
            let files = crate::pki::issue(&ca, &agency, &out, days)?;
            println!(
                "{}\n{}\n{}",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            );
            Ok(())
        }
        Command::Plan(cmd) => client::plan(cmd).await,
        Command::Goal(cmd) => client::goal(cmd).await,
        Command::Referral(cmd) => client::referral(cmd).await,
        Command::Consent(cmd) => consent::run(cmd).await,
        Command::Audit(cmd) => client::audit(cmd).await,
        Command::Status(args) => client::status(args).await,
        Command::Peers(conn) => client::peers(conn).await,
        Command::Backup { out, conn } => client::backup(&out, conn).await,
        Command::Restore { from, data } => {
            let (header, summary, entries) = crate::backup::restore_into(&from, &data)?;
            println!(
                "restored {} records of {} (taken {}) into {}; audit chain ok: {entries} entries",
                summary.records,
                header.agency,
                weft_consent::Timestamp::from_millis(header.created_at_ms),
                data.display()
            );
            println!(
                "the consent signing key is in {}",
                data.join("signing.key").display()
            );
            Ok(())
        }
        Command::User(UserCmd::Add(args)) => match &args.config {
            Some(config) => offline_user_add(config, &args),
            None => client::user_add(args).await,
        },
        Command::User(UserCmd::List(conn)) => client::user_list(conn).await,
        Command::Guardian(GuardianCmd::Invite(args)) => client::guardian_invite(args).await,
        Command::User(UserCmd::Whoami(conn)) => client::whoami(conn).await,
    }
}

async fn serve(config: PathBuf) -> anyhow::Result<()> {
    let config = crate::config::Config::load(&config)?;
    let node = crate::server::Node::bind(config).await?;
    println!(
        "weft node {} serving the client API on https://{}",
        node.service().agency(),
        node.api_addr()
    );
    // SIGHUP reloads the certificate and key (they are also picked up when the files change).
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let stop = wait_for_stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = hup.recv() => match node.reload_tls() {
                    Ok(()) => tracing::info!("SIGHUP: certificate reloaded"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: the certificate does not load; keeping the old one"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    wait_for_stop_signal().await;
    tracing::info!("stopping");
    node.stop().await?;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn seed(
    config: &std::path::Path,
    plans: u64,
    consent_to: &[String],
    access: &str,
    until: &str,
    pick: Option<(usize, usize)>,
    only_for: &[String],
) -> anyhow::Result<()> {
    let config = crate::config::Config::load(config)?;
    let agencies = |flag: &str, list: &[String]| {
        list.iter()
            .map(|a| crate::model::AgencyId::parse(a.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
    };
    let grantees = agencies("--consent-to", consent_to)?;
    if grantees.contains(&config.agency) {
        anyhow::bail!("--consent-to: a plan's home agency needs no consent");
    }
    let only_for = agencies("--only-for", only_for)?;
    if let Some(a) = only_for.iter().find(|a| !grantees.contains(a)) {
        anyhow::bail!("--only-for: {a} is not one of the --consent-to agencies");
    }
    let consents = crate::seed::SeedConsents {
        grantees,
        access: access.into(),
        until: until.into(),
        pick,
        only_for,
    };
    let store = crate::server::open_store(&config)?;
    let svc =
        crate::server::service_for(&config, store, std::sync::Arc::new(crate::model::now)).await?;
    let started = std::time::Instant::now();
    let done = crate::seed::seed(&svc, plans, &consents).await?;
    println!(
        "seeded {} plans ({} sections, {} bytes saved, {} consents) in {:.1} s",
        done.plans,
        done.sections,
        done.bytes,
        done.consents,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn offline_user_add(config: &std::path::Path, args: &UserAddArgs) -> anyhow::Result<()> {
    let config = crate::config::Config::load(config)?;
    let role: crate::model::Role = args.role.parse()?;
    if !args.plans.is_empty() {
        anyhow::bail!("offline `user add` makes operators (admin, coordinator, caseworker, auditor); add guardians through the running node");
    }
    let store = crate::server::open_store(&config)?;
    let (user, token) = crate::service::bootstrap_user(
        &store,
        &config.agency,
        &args.name,
        role,
        crate::model::now(),
    )?;
    if args.conn.json {
        println!(
            "{}",
            serde_json::json!({"name": user.name, "role": user.role.as_str(), "token": token})
        );
    } else {
        println!("added {} as {} at {}", user.name, user.role, config.agency);
        println!("token (shown once): {token}");
    }
    Ok(())
}

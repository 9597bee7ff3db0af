//! `weft dev`: a ready-to-use local node on embedded defaults.
//!
//! Layout under DIR: `ca/` (a throwaway dev CA), `certs/`, `school/` (the sled store),
//! `school.toml` (its config), `school.env` (a coordinator's `WEFT_NODE`, `WEFT_CA`,
//! `WEFT_TOKEN`) and `school-admin.env` (an admin's). A second run reuses all of it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, DataLocation, TlsFiles};
use crate::model::{now, AgencyId, Caller, Role};
use crate::server::{open_store, Node};
use crate::service::bootstrap_user;

/// The agencies `weft dev` runs: (short name, agency id).
pub const DEV_AGENCIES: &[(&str, &str)] = &[("school", "school.test")];

fn write_env(path: &Path, node: &str, ca: &Path, token: &str) -> anyhow::Result<()> {
    let text = format!(
        "# Weft client settings (weft dev). Use: set -a; . {}; set +a\nWEFT_NODE={node}\nWEFT_CA={}\nWEFT_TOKEN={token}\n",
        path.display(),
        ca.display()
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Runs the dev setup until Ctrl-C.
pub async fn run(dir: &Path, port: u16) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let ca_dir = dir.join("ca");
    if !ca_dir.join("ca.key").is_file() {
        crate::pki::init_ca(&ca_dir, "Weft dev federation CA (throwaway)")?;
    }
    let (short, agency) = DEV_AGENCIES[0];
    let agency = AgencyId::parse(agency)?;
    let certs = dir.join("certs");
    let tls = if certs.join(format!("{agency}.crt")).is_file() {
        TlsFiles {
            cert: certs.join(format!("{agency}.crt")),
            key: certs.join(format!("{agency}.key")),
            ca: certs.join("ca.crt"),
        }
    } else {
        crate::pki::issue(&ca_dir, &agency, &certs, 397)?
    };
    let data_dir = dir.join(short);
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let config_path = dir.join(format!("{short}.toml"));
    std::fs::write(
        &config_path,
        crate::config::render(&agency, &data_dir, listen, &tls),
    )?;
    let config = Config::load(&config_path)?;

    let env_path = dir.join(format!("{short}.env"));
    let node_url = format!("https://127.0.0.1:{port}");
    let first_run = !env_path.is_file();
    let store = open_store(&DataLocation::Dir(data_dir.clone()))?;
    if first_run {
        let (_, token) = bootstrap_user(&store, &agency, "coordinator", Role::Coordinator, now())?;
        write_env(&env_path, &node_url, &tls.ca, &token)?;
        let (_, admin) = bootstrap_user(&store, &agency, "admin", Role::Admin, now())?;
        write_env(
            &dir.join(format!("{short}-admin.env")),
            &node_url,
            &tls.ca,
            &admin,
        )?;
    } else {
        // The port may have changed since the env files were written.
        for name in [format!("{short}.env"), format!("{short}-admin.env")] {
            let path = dir.join(name);
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Some(token) = text.lines().find_map(|l| l.strip_prefix("WEFT_TOKEN=")) {
                    write_env(&path, &node_url, &tls.ca, token)?;
                }
            }
        }
    }

    let node = Node::bind_with_store(config, store, Arc::new(now))
        .await
        .with_context(|| format!("cannot start {agency} on port {port} (in use? try --port)"))?;

    let mut sample = None;
    if first_run {
        let coordinator = Caller {
            agency: agency.clone(),
            user: "coordinator".into(),
            role: Role::Coordinator,
            subjects: vec![],
        };
        let svc = node.service();
        let plan = svc
            .create_plan(
                &coordinator,
                "Maya",
                "Example",
                Some("2015-04-12"),
                vec![
                    ("profile".into(), "grade".into(), "5".into()),
                    ("profile".into(), "tier".into(), "2".into()),
                    (
                        "strengths".into(),
                        "strengths".into(),
                        "curious; kind to classmates".into(),
                    ),
                ],
            )
            .await?;
        svc.add_goal(
            &coordinator,
            plan.id,
            "academic",
            "Read 20 minutes every school day",
            "short",
            None,
        )
        .await?;
        sample = Some(plan.id);
    }

    let env = env_path.display();
    println!();
    println!("Weft dev federation is running (Ctrl-C to stop)");
    println!(
        "  {agency:<14} client API https://{}  data {}",
        node.api_addr(),
        data_dir.display()
    );
    println!();
    println!("Client settings for a coordinator: {env}");
    println!("Try:");
    println!("  set -a; . {env}; set +a");
    println!("  weft plan list");
    match sample {
        Some(p) => println!("  weft plan show {p}"),
        None => println!("  weft plan show <PLAN>"),
    }
    println!("  weft plan create --given-name Sam --family-name Doe --date-of-birth 2016-09-01");
    println!("  weft plan set <PLAN> profile.grade=4 health.allergies=\"peanuts;dust\"");
    println!("  weft goal add <PLAN> --domain academic --text \"Read daily\" --horizon short");
    println!("  weft plan history <PLAN>");
    println!("  weft audit log && weft audit verify");
    println!();

    super::wait_for_stop_signal().await;
    println!("stopping");
    node.stop().await?;
    Ok(())
}

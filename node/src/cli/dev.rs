//! `weft dev`: a ready-to-use local federation of three agencies on embedded defaults.
//!
//! `school.test`, `clinic.test` and `nutrition.test` run in this process, each with its own
//! sled store and peers over mutual TLS. Layout under DIR: `ca/` (a throwaway dev CA),
//! `certs/`, `<agency>/` (the stores), `<agency>.toml` (configs), `<agency>.env` (a
//! coordinator's `WEFT_NODE`, `WEFT_CA`, `WEFT_TOKEN`) and `<agency>-admin.env` (an admin's),
//! where `<agency>` is `school`, `clinic` or `nutrition`. A second run reuses all of it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, FamilyConfig, FederationConfig, PeerConfig, TlsFiles};
use crate::model::{now, AgencyId, Caller, Role};
use crate::server::{open_store, Node};
use crate::service::bootstrap_user;

/// The agencies `weft dev` runs: (short name, agency id).
pub const DEV_AGENCIES: &[(&str, &str)] = &[
    ("school", "school.test"),
    ("clinic", "clinic.test"),
    ("nutrition", "nutrition.test"),
];

/// How the family page names each dev agency.
fn dev_name(agency: &str) -> &'static str {
    match agency {
        "school.test" => "Lincoln Elementary School",
        "clinic.test" => "Riverside Health Clinic",
        "nutrition.test" => "Eastside Nutrition Center",
        _ => "Partner agency",
    }
}

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

/// Ports of agency number `i`: client API `base + i`, federation `base + 10 + i`.
fn ports(base: u16, i: usize) -> (u16, u16) {
    (base + i as u16, base + 10 + i as u16)
}

/// Runs the dev federation until Ctrl-C.
pub async fn run(dir: &Path, port: u16) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let ca_dir = dir.join("ca");
    if !ca_dir.join("ca.key").is_file() {
        crate::pki::init_ca(&ca_dir, "Weft dev federation CA (throwaway)")?;
    }
    let certs = dir.join("certs");
    let mut nodes = Vec::new();
    let mut first_run_school = false;
    for (i, (short, agency)) in DEV_AGENCIES.iter().enumerate() {
        let agency = AgencyId::parse(agency)?;
        let tls = if certs.join(format!("{agency}.crt")).is_file() {
            TlsFiles {
                cert: certs.join(format!("{agency}.crt")),
                key: certs.join(format!("{agency}.key")),
                ca: certs.join("ca.crt"),
            }
        } else {
            crate::pki::issue(&ca_dir, &agency, &certs, 397)?
        };
        let (api_port, fed_port) = ports(port, i);
        let peers = DEV_AGENCIES
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, (_, a))| {
                Ok(PeerConfig {
                    agency: AgencyId::parse(a)?,
                    endpoint: format!("https://127.0.0.1:{}", ports(port, j).1),
                    name: Some(dev_name(a).to_string()),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let federation = FederationConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, fed_port)),
            peers,
        };
        let data_dir = dir.join(short);
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, api_port));
        let config_path = dir.join(format!("{short}.toml"));
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, port + 20 + i as u16));
        // The school, home of the sample plan, serves the family page.
        let family = (i == 0).then(|| FamilyConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port + 30)),
            public_url: None,
            name: Some(dev_name(agency.as_str()).to_string()),
        });
        std::fs::write(
            &config_path,
            crate::config::render_full(
                &agency,
                &data_dir,
                listen,
                &tls,
                Some(&federation),
                Some(metrics),
                family.as_ref(),
            ),
        )?;
        let config = Config::load(&config_path)?;

        let env_path = dir.join(format!("{short}.env"));
        let node_url = format!("https://127.0.0.1:{api_port}");
        let first_run = !env_path.is_file();
        let store = open_store(&config)?;
        if first_run {
            let (_, token) =
                bootstrap_user(&store, &agency, "coordinator", Role::Coordinator, now())?;
            write_env(&env_path, &node_url, &tls.ca, &token)?;
            let (_, admin) = bootstrap_user(&store, &agency, "admin", Role::Admin, now())?;
            write_env(
                &dir.join(format!("{short}-admin.env")),
                &node_url,
                &tls.ca,
                &admin,
            )?;
            first_run_school |= i == 0;
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
            .with_context(|| {
                format!("cannot start {agency} on ports {api_port}/{fed_port} (in use? try --port)")
            })?;
        nodes.push((agency, data_dir, env_path, node));
    }

    let mut sample = None;
    if first_run_school {
        let school = &nodes[0];
        let coordinator = Caller {
            agency: school.0.clone(),
            user: "coordinator".into(),
            role: Role::Coordinator,
            subjects: vec![],
        };
        let svc = school.3.service();
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
                    ("health".into(), "conditions".into(), "asthma".into()),
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
        let until = time::OffsetDateTime::now_utc() + time::Duration::days(180);
        svc.grant(
            &coordinator,
            crate::service::GrantInput {
                plan: Some(plan.id),
                grantee: "clinic.test".into(),
                sections: vec!["goals".into()],
                access: "read_write".into(),
                purpose: "care_coordination".into(),
                valid_from: None,
                valid_until: format!(
                    "{:04}-{:02}-{:02}",
                    until.year(),
                    until.month() as u8,
                    until.day()
                ),
                grantor_name: "Rosa Example".into(),
                relationship: "parent".into(),
                method: "paper_form".into(),
            },
        )
        .await?;
        sample = Some(plan.id);
    }

    // A fresh demo invitation on every run (each is single use and lasts 72 hours).
    let mut demo_invite = None;
    if let Some(base) = nodes[0].3.family_url() {
        let school = &nodes[0];
        let coordinator = Caller {
            agency: school.0.clone(),
            user: "coordinator".into(),
            role: Role::Coordinator,
            subjects: vec![],
        };
        let svc = school.3.service();
        let plan = match sample {
            Some(p) => Some(p),
            None => svc
                .list_plans(&coordinator, None, 1)
                .await?
                .0
                .first()
                .map(|p| p.plan.id),
        };
        if let Some(plan) = plan {
            let invite = svc
                .invite_guardian(&coordinator, plan, "Rosa Example", "parent")
                .await?;
            demo_invite = Some(crate::family::invite_link(base, &invite.token));
        }
    }

    println!();
    println!("Weft dev federation is running (Ctrl-C to stop)");
    for (agency, data_dir, _, node) in &nodes {
        println!(
            "  {agency:<15} client API https://{}  peers {}  metrics http://{}/metrics\n  {:<15} data {}",
            node.api_addr(),
            node.federation_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            node.metrics_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            "",
            data_dir.display()
        );
    }
    if let Some(url) = nodes[0].3.family_url() {
        println!();
        println!("Family page of {}: {url}/", nodes[0].0);
        if let Some(link) = &demo_invite {
            println!("  demo guardian invitation for the sample plan (single use, 72 hours):");
            println!("  {link}");
            println!("  (the dev CA is not trusted by your browser: accept the warning, or import {}/ca/ca.crt)", dir.display());
        }
    }
    let env = nodes[0].2.display();
    let clinic_env = nodes[1].2.display();
    println!();
    println!(
        "Client settings per agency: {}/<agency>.env (a coordinator's token)",
        dir.display()
    );
    println!("Try:");
    println!("  set -a; . {env}; set +a");
    println!("  weft plan list");
    match sample {
        Some(p) => {
            println!("  weft plan show {p}");
            println!("  weft consent list --plan {p}");
            println!("  weft peers");
            println!("  (set -a; . {clinic_env}; set +a; weft plan show {p})   # the clinic holds only goals");
            println!("  weft audit disclosures --plan {p}");
        }
        None => println!("  weft plan show <PLAN>"),
    }
    println!("  weft plan create --given-name Sam --family-name Doe --date-of-birth 2016-09-01");
    println!("  weft consent grant --plan <PLAN> --to clinic.test --sections goals --access read_write --purpose care_coordination --until 2027-06-30 --grantor \"A Parent\" --relationship parent --method paper");
    println!("  weft audit log && weft audit verify");
    if sample.is_some() {
        println!("  weft guardian invite <PLAN> --name \"A Parent\" --relationship parent");
    }
    println!();

    super::wait_for_stop_signal().await;
    println!("stopping");
    for (_, _, _, node) in nodes {
        node.stop().await?;
    }
    Ok(())
}

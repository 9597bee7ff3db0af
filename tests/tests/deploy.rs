//! The deployment files under `deploy/` stay valid: every node config passes
//! `weft config check`, every YAML file parses (and the compose file and the Kubernetes
//! manifests refer to files and fields that exist), and the systemd unit verifies.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn with_extension(exts: &[&str]) -> Vec<PathBuf> {
    files_under(&deploy_dir())
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a (possibly multi-document) YAML file, with merge keys (`<<`) applied.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let mut value = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} (document {}): {e}", path.display(), i + 1));
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{} (document {}): {e}", path.display(), i + 1));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

#[test]
fn every_node_config_under_deploy_passes_config_check() {
    let configs = with_extension(&["toml"]);
    for expected in [
        "weft.example.toml",
        "compose/school.toml",
        "compose/clinic.toml",
        "compose/nutrition.toml",
        "systemd/weft.toml",
    ] {
        assert!(
            configs.contains(&deploy_dir().join(expected)),
            "deploy/{expected} is missing"
        );
    }
    for config in &configs {
        let file = config.to_str().expect("UTF-8 path");
        let (ok, stdout, stderr) =
            weft_tests::weft(&["config", "check", "--skip-files", file]).expect("run weft");
        assert!(
            ok,
            "weft config check --skip-files {file} failed:\n{stderr}{stdout}"
        );
        assert!(stdout.contains(": ok ("), "{file}: {stdout}");
    }
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = with_extension(&["yaml", "yml"]);
    assert!(!files.is_empty(), "no YAML files under deploy/");
    for file in &files {
        assert!(
            !yaml_documents(file).is_empty(),
            "{}: no YAML documents",
            file.display()
        );
    }
}

/// A compose short-syntax volume (`SOURCE:TARGET[:MODE]`) or long syntax, as (type, source,
/// target); type is `bind` for a source that is a path.
fn compose_mount(v: &Value) -> (String, String, String) {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            assert!(parts.len() >= 2, "volume `{s}` has no target");
            let source = parts[0].to_string();
            let kind = if source.starts_with('.') || source.starts_with('/') {
                "bind"
            } else {
                "volume"
            };
            (kind.into(), source, parts[1].to_string())
        }
        Value::Mapping(_) => {
            let get = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            (get("type"), get("source"), get("target"))
        }
        other => panic!("unexpected volume entry {other:?}"),
    }
}

#[test]
fn compose_refers_to_files_that_exist() {
    let compose = deploy_dir().join("compose/compose.yaml");
    let dir = compose.parent().unwrap().to_path_buf();
    let docs = yaml_documents(&compose);
    assert_eq!(docs.len(), 1, "compose.yaml is one document");
    let doc = &docs[0];
    let services = doc
        .get("services")
        .and_then(Value::as_mapping)
        .expect("services");
    let named_volumes: BTreeSet<String> = doc
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();

    let mut mounted_configs = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        if let Some(build) = service.get("build") {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.clone(), "Dockerfile".to_string()),
                _ => (
                    build
                        .get("context")
                        .and_then(Value::as_str)
                        .unwrap_or(".")
                        .to_string(),
                    build
                        .get("dockerfile")
                        .and_then(Value::as_str)
                        .unwrap_or("Dockerfile")
                        .to_string(),
                ),
            };
            let context = dir.join(context);
            assert!(
                context.is_dir(),
                "{name}: build context {} does not exist",
                context.display()
            );
            let dockerfile = context.join(dockerfile);
            assert!(
                dockerfile.is_file(),
                "{name}: dockerfile {} does not exist",
                dockerfile.display()
            );
        }
        for v in service
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let (kind, source, target) = compose_mount(v);
            match kind.as_str() {
                "bind" => {
                    let path = dir.join(&source);
                    assert!(
                        path.exists(),
                        "{name}: bind-mounted {source} ({}) does not exist",
                        path.display()
                    );
                    if target.ends_with(".toml") {
                        mounted_configs.insert(path);
                    }
                }
                "volume" => assert!(
                    named_volumes.contains(&source),
                    "{name}: volume `{source}` is not declared under volumes:"
                ),
                _ => {}
            }
        }
        if name != "pki" {
            let published: Vec<&str> = service
                .get("ports")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            assert!(!published.is_empty(), "{name}: publishes no ports");
            for p in published {
                assert!(
                    p.starts_with("127.0.0.1:"),
                    "{name}: port {p} is not on 127.0.0.1"
                );
            }
            let depends = service.get("depends_on").and_then(|d| d.get("pki"));
            assert_eq!(
                depends
                    .and_then(|d| d.get("condition"))
                    .and_then(Value::as_str),
                Some("service_completed_successfully"),
                "{name}: must wait for pki"
            );
        }
    }
    let expected: BTreeSet<PathBuf> = ["school.toml", "clinic.toml", "nutrition.toml"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    assert_eq!(mounted_configs, expected, "the agencies' config files");
    for config in &mounted_configs {
        assert!(config.is_file(), "{} does not exist", config.display());
    }
}

#[test]
fn kubernetes_manifests_have_api_version_and_kind() {
    let dir = deploy_dir().join("kubernetes");
    let files: Vec<PathBuf> = files_under(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    let mut kinds = BTreeSet::new();
    for file in &files {
        for doc in yaml_documents(file) {
            let api = doc.get("apiVersion").and_then(Value::as_str);
            let kind = doc.get("kind").and_then(Value::as_str);
            assert!(
                api.is_some_and(|a| !a.is_empty()),
                "{}: a document has no apiVersion",
                file.display()
            );
            let kind = kind.unwrap_or_else(|| panic!("{}: a document has no kind", file.display()));
            assert!(
                doc.get("metadata")
                    .and_then(|m| m.get("namespace"))
                    .is_none(),
                "{}: manifests are namespace-agnostic",
                file.display()
            );
            kinds.insert(kind.to_string());
        }
    }
    for kind in ["StatefulSet", "Service", "ConfigMap"] {
        assert!(kinds.contains(kind), "no {kind} under deploy/kubernetes");
    }

    // The ConfigMap's weft.toml is a valid node config too.
    let configmap = yaml_documents(&dir.join("configmap.yaml"));
    let toml = configmap[0]
        .get("data")
        .and_then(|d| d.get("weft.toml"))
        .and_then(Value::as_str)
        .expect("configmap data weft.toml");
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("weft.toml");
    std::fs::write(&file, toml).expect("write weft.toml");
    let (ok, stdout, stderr) =
        weft_tests::weft(&["config", "check", "--skip-files", file.to_str().unwrap()])
            .expect("run weft");
    assert!(ok, "the ConfigMap's weft.toml:\n{stderr}{stdout}");
}

/// The sections of an INI-like file, in order.
fn ini_sections(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l[1..l.len() - 1].to_string())
        .collect()
}

#[test]
fn systemd_unit_verifies() {
    let unit = deploy_dir().join("systemd/weft.service");
    let text = read(&unit);
    assert_eq!(ini_sections(&text), ["Unit", "Service", "Install"]);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        assert!(line.contains('='), "not a key=value line: {line}");
    }
    assert!(text.contains("\nExecStart=/usr/local/bin/weft serve --config /etc/weft/weft.toml\n"));

    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not on PATH: checked only that weft.service parses");
        return;
    };
    let bin = weft_tests::weft_bin().expect("weft binary");
    let tmp = tempfile::tempdir().expect("temp dir");
    let copy = tmp.path().join("weft.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/weft", bin.to_str().expect("UTF-8 path")),
    )
    .expect("write unit copy");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Tolerated: warnings that the weft user does not exist on the machine running the tests.
    let about_user = |l: &str| l.contains("weft") && l.to_lowercase().contains("user");
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    let problems: Vec<&&str> = lines
        .iter()
        .filter(|l| !about_user(l))
        .filter(|l| l.contains("Failed") || l.to_lowercase().contains("error"))
        .collect();
    assert!(
        problems.is_empty(),
        "systemd-analyze verify reported:\n{output}"
    );
    assert!(
        out.status.success() || (!lines.is_empty() && lines.iter().all(|l| about_user(l))),
        "systemd-analyze verify exited with {}:\n{output}",
        out.status
    );
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

//! Node configuration: a TOML file read in two steps. [`FileConfig`] mirrors the file
//! (unknown keys are an error), and [`FileConfig::validate`] turns it into the runtime
//! [`Config`], reporting every problem at once.
//!
//! ```toml
//! agency = "school.test"          # this node's agency id (DNS-like)
//! data_dir = "data"               # sled store; relative paths are from the config file
//!
//! [api]
//! listen = "127.0.0.1:7400"       # client API (gRPC over TLS)
//!
//! [tls]
//! cert = "certs/school.test.crt"  # this node's certificate (PEM), signed by the CA
//! key = "certs/school.test.key"   # its private key (PEM)
//! ca = "certs/ca.crt"             # the federation CA (PEM)
//!
//! [storage]
//! compact_after_chunks = 64       # fold a section's change chunks into a snapshot
//! cache_mib = 16                  # sled's page cache, MiB
//! doc_cache = 4096                # section documents kept loaded (~17 KiB each)
//!
//! [consent]
//! signing_key = "certs/signing.key" # Ed25519 key that signs consents (default: in data_dir)
//!
//! [family]
//! listen = "0.0.0.0:7430"         # the family page (HTTPS, same certificate as the API)
//! public_url = "https://family.school.example.org" # how families reach it (invite links)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::AgencyId;

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// This node's agency id.
    pub agency: String,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// The client API.
    pub api: ApiSection,
    /// Certificates.
    pub tls: TlsSection,
    /// Storage tuning.
    #[serde(default)]
    pub storage: StorageSection,
    /// Consent signing.
    #[serde(default)]
    pub consent: ConsentSection,
    /// Replication with peer agencies (optional: a node may stand alone).
    pub federation: Option<FederationSection>,
    /// Prometheus metrics (optional).
    pub metrics: Option<MetricsSection>,
    /// The family page (optional: off when absent).
    pub family: Option<FamilySection>,
}

/// `[family]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilySection {
    /// Address for the family page (HTTPS with the node certificate), `ip:port`.
    pub listen: String,
    /// The address families use, `https://host[:port]`, for invitation links. Default:
    /// `https://` plus the listen address.
    pub public_url: Option<String>,
    /// This agency's name as families read it (default: the agency id).
    pub name: Option<String>,
}

/// The family page's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The base of invitation links, without a trailing `/` (`None`: from the bound address).
    pub public_url: Option<String>,
    /// This agency's name for families, if configured.
    pub name: Option<String>,
}

/// `[metrics]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address for `GET /metrics` (plain HTTP), `ip:port`. Keep it on a private interface.
    pub listen: String,
}

/// `[federation]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    /// Address for peer streams (gRPC over mutual TLS), `ip:port`.
    pub listen: String,
    /// The peer agencies.
    #[serde(default)]
    pub peers: Vec<PeerSection>,
}

/// `[[federation.peers]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The peer's agency id; its certificate must name it.
    pub agency: String,
    /// Where to reach it, `https://host:port`.
    pub endpoint: String,
    /// The agency's name as families read it on the family page (default: the agency id).
    pub name: Option<String>,
}

/// A peer agency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its agency id.
    pub agency: AgencyId,
    /// Its federation endpoint.
    pub endpoint: String,
    /// Its display name for families, if configured.
    pub name: Option<String>,
}

/// Replication settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederationConfig {
    /// Where peers connect.
    pub listen: SocketAddr,
    /// The peers.
    pub peers: Vec<PeerConfig>,
}

/// `[consent]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentSection {
    /// The node's Ed25519 key that signs consent records (hex seed). Created on first start
    /// if missing. Default: `signing.key` in the data directory.
    pub signing_key: Option<PathBuf>,
}

/// `[api]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address to listen on, `host:port`.
    pub listen: String,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// Federation CA, PEM.
    pub ca: PathBuf,
}

/// `[storage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Fold chunks into a snapshot after this many (2–100000).
    #[serde(default = "default_compact")]
    pub compact_after_chunks: u64,
    /// sled's page cache in MiB (1–65536).
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u64,
    /// Section documents kept loaded between edits (0–1000000).
    #[serde(default = "default_doc_cache")]
    pub doc_cache: usize,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            compact_after_chunks: default_compact(),
            cache_mib: default_cache_mib(),
            doc_cache: default_doc_cache(),
        }
    }
}

fn default_compact() -> u64 {
    64
}

fn default_cache_mib() -> u64 {
    crate::storage::sled::DEFAULT_CACHE_MIB
}

/// The most section documents `[storage] doc_cache` may keep loaded (~17 GiB at ~17 KiB each).
const MAX_DOC_CACHE: usize = 1_000_000;

fn default_doc_cache() -> usize {
    crate::storage::DEFAULT_DOC_CACHE
}

/// Where the node keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataLocation {
    /// A sled store in this directory.
    Dir(PathBuf),
    /// In memory (tests only); lost when the node stops.
    Memory,
}

/// Certificate files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// Federation CA, PEM.
    pub ca: PathBuf,
}

/// The validated runtime configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's agency.
    pub agency: AgencyId,
    /// The store.
    pub data: DataLocation,
    /// Client API address.
    pub api_listen: SocketAddr,
    /// Certificates.
    pub tls: TlsFiles,
    /// Fold chunks into a snapshot after this many.
    pub compact_after_chunks: u64,
    /// sled's page cache, MiB (a store in a directory).
    pub cache_mib: u64,
    /// Section documents kept loaded between edits.
    pub doc_cache: usize,
    /// The consent signing key's file (`None`: `signing.key` in the data directory, or a
    /// throwaway key for an in-memory node).
    pub signing_key: Option<PathBuf>,
    /// Replication with peers, if configured.
    pub federation: Option<FederationConfig>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The family page, if enabled.
    pub family: Option<FamilyConfig>,
    /// SHA-256 of the config file this came from (empty when built in code), for backups.
    pub source_sha256: String,
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {}", problems.join("; "))]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// Each problem, in plain words.
    pub problems: Vec<String>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, true)
    }

    /// Like [`Config::load`]; with `check_files` false, the certificate files it names need
    /// not exist (checking an example config, or one for another machine).
    pub fn load_with(path: &Path, check_files: bool) -> Result<Config, ConfigError> {
        let err = |p: String| ConfigError {
            path: path.display().to_string(),
            problems: vec![p],
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| err(e.to_string().trim().to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
        file.validate_with(base, check_files)
            .map(|mut c| {
                c.source_sha256 = digest;
                c
            })
            .map_err(|problems| ConfigError {
                path: path.display().to_string(),
                problems,
            })
    }
}

impl FileConfig {
    /// Checks every field; relative paths are taken from `base`. Returns every problem.
    pub fn validate(self, base: &Path) -> Result<Config, Vec<String>> {
        self.validate_with(base, true)
    }

    /// Like [`FileConfig::validate`]; with `check_files` false, missing certificate files are
    /// not a problem.
    pub fn validate_with(self, base: &Path, check_files: bool) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let agency = AgencyId::parse(&self.agency)
            .map_err(|e| problems.push(format!("agency: {e}")))
            .ok();
        let api_listen = self
            .api
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| {
                problems.push(format!(
                    "api.listen: `{}` is not host:port",
                    self.api.listen
                ))
            })
            .ok();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let tls = TlsFiles {
            cert: resolve(&self.tls.cert),
            key: resolve(&self.tls.key),
            ca: resolve(&self.tls.ca),
        };
        for (name, p) in [
            ("tls.cert", &tls.cert),
            ("tls.key", &tls.key),
            ("tls.ca", &tls.ca),
        ] {
            if check_files && !p.is_file() {
                problems.push(format!("{name}: no file at {}", p.display()));
            }
        }
        let federation = self.federation.map(|f| {
            let listen = f
                .listen
                .parse::<SocketAddr>()
                .map_err(|_| {
                    problems.push(format!(
                        "federation.listen: `{}` is not an IP address and port",
                        f.listen
                    ))
                })
                .ok();
            let mut peers = Vec::new();
            for (i, p) in f.peers.iter().enumerate() {
                let n = i + 1;
                match AgencyId::parse(&p.agency) {
                    Ok(a) if agency.as_ref() == Some(&a) => problems.push(format!(
                        "federation.peers[{n}].agency: a node is not its own peer"
                    )),
                    Ok(a) if peers.iter().any(|x: &PeerConfig| x.agency == a) => problems.push(
                        format!("federation.peers[{n}].agency: `{a}` is listed twice"),
                    ),
                    Ok(a) => {
                        if !p.endpoint.starts_with("https://") {
                            problems.push(format!(
                                "federation.peers[{n}].endpoint: must start with https://"
                            ));
                        }
                        let name = p.name.as_deref().map(str::trim);
                        if name.is_some_and(|t| {
                            t.is_empty()
                                || t.chars().count() > 100
                                || t.chars().any(char::is_control)
                        }) {
                            problems.push(format!(
                                "federation.peers[{n}].name: 1 to 100 printable characters"
                            ));
                        }
                        peers.push(PeerConfig {
                            agency: a,
                            endpoint: p.endpoint.clone(),
                            name: name.map(String::from),
                        });
                    }
                    Err(e) => problems.push(format!("federation.peers[{n}].agency: {e}")),
                }
            }
            listen.map(|listen| FederationConfig { listen, peers })
        });
        let metrics_listen = self.metrics.and_then(|m| {
            m.listen
                .parse::<SocketAddr>()
                .map_err(|_| {
                    problems.push(format!(
                        "metrics.listen: `{}` is not an IP address and port",
                        m.listen
                    ))
                })
                .ok()
        });
        let family = self.family.and_then(|f| {
            let listen = f
                .listen
                .parse::<SocketAddr>()
                .map_err(|_| {
                    problems.push(format!(
                        "family.listen: `{}` is not an IP address and port",
                        f.listen
                    ))
                })
                .ok();
            let public_url = f
                .public_url
                .map(|u| u.trim().trim_end_matches('/').to_string());
            if let Some(u) = &public_url {
                let rest = u.strip_prefix("https://").unwrap_or("");
                if rest.is_empty() || rest.contains(['?', '#', ' ']) {
                    problems.push(format!(
                        "family.public_url: `{u}` is not an https:// address (https://host[:port])"
                    ));
                }
            }
            let name = f.name.map(|n| n.trim().to_string());
            if name.as_ref().is_some_and(|n| {
                n.is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control)
            }) {
                problems.push("family.name: 1 to 100 printable characters".into());
            }
            listen.map(|listen| FamilyConfig {
                listen,
                public_url,
                name,
            })
        });
        if !(2..=100_000).contains(&self.storage.compact_after_chunks) {
            problems.push("storage.compact_after_chunks: must be between 2 and 100000".into());
        }
        if !(1..=65_536).contains(&self.storage.cache_mib) {
            problems.push("storage.cache_mib: must be between 1 and 65536".into());
        }
        if self.storage.doc_cache > MAX_DOC_CACHE {
            problems.push(format!(
                "storage.doc_cache: must be between 0 and {MAX_DOC_CACHE}"
            ));
        }
        match (agency, api_listen, problems.is_empty()) {
            (Some(agency), Some(api_listen), true) => Ok(Config {
                agency,
                data: DataLocation::Dir(resolve(&self.data_dir)),
                api_listen,
                tls,
                compact_after_chunks: self.storage.compact_after_chunks,
                cache_mib: self.storage.cache_mib,
                doc_cache: self.storage.doc_cache,
                signing_key: self.consent.signing_key.as_deref().map(resolve),
                federation: federation.flatten(),
                metrics_listen,
                family,
                source_sha256: String::new(),
            }),
            _ => Err(problems),
        }
    }
}

/// Writes a config file for a node (used by `weft dev` and the tests).
pub fn render(
    agency: &AgencyId,
    data_dir: &Path,
    listen: SocketAddr,
    tls: &TlsFiles,
    federation: Option<&FederationConfig>,
) -> String {
    render_with_metrics(agency, data_dir, listen, tls, federation, None)
}

/// Like [`render`], with a `[metrics]` section when `metrics` is given.
pub fn render_with_metrics(
    agency: &AgencyId,
    data_dir: &Path,
    listen: SocketAddr,
    tls: &TlsFiles,
    federation: Option<&FederationConfig>,
    metrics: Option<SocketAddr>,
) -> String {
    render_full(agency, data_dir, listen, tls, federation, metrics, None)
}

/// Like [`render_with_metrics`], with a `[family]` section when `family` is given.
pub fn render_full(
    agency: &AgencyId,
    data_dir: &Path,
    listen: SocketAddr,
    tls: &TlsFiles,
    federation: Option<&FederationConfig>,
    metrics: Option<SocketAddr>,
    family: Option<&FamilyConfig>,
) -> String {
    let mut text = format!(
        "# Weft node config (written by `weft dev`)\n\
         agency = \"{agency}\"\n\
         data_dir = \"{}\"\n\n\
         [api]\n\
         listen = \"{listen}\"\n\n\
         [tls]\n\
         cert = \"{}\"\n\
         key = \"{}\"\n\
         ca = \"{}\"\n\n\
         [storage]\n\
         compact_after_chunks = 64\n",
        data_dir.display(),
        tls.cert.display(),
        tls.key.display(),
        tls.ca.display()
    );
    if let Some(m) = metrics {
        text.push_str(&format!("\n[metrics]\nlisten = \"{m}\"\n"));
    }
    if let Some(f) = family {
        text.push_str(&format!("\n[family]\nlisten = \"{}\"\n", f.listen));
        if let Some(u) = &f.public_url {
            text.push_str(&format!("public_url = \"{u}\"\n"));
        }
        if let Some(n) = &f.name {
            text.push_str(&format!("name = {}\n", toml_string(n)));
        }
    }
    if let Some(f) = federation {
        text.push_str(&format!("\n[federation]\nlisten = \"{}\"\n", f.listen));
        for p in &f.peers {
            text.push_str(&format!(
                "\n[[federation.peers]]\nagency = \"{}\"\nendpoint = \"{}\"\n",
                p.agency, p.endpoint
            ));
            if let Some(n) = &p.name {
                text.push_str(&format!("name = {}\n", toml_string(n)));
            }
        }
    }
    text
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected() {
        let text = "agency = \"a.test\"\ndata_dir = \"d\"\ncolour = \"blue\"\n[api]\nlisten = \"127.0.0.1:1\"\n[tls]\ncert=\"c\"\nkey=\"k\"\nca=\"a\"\n";
        let err = toml::from_str::<FileConfig>(text).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    /// A minimal valid config file, to which a test adds sections.
    const MINIMAL: &str = "agency = \"a.test\"\ndata_dir = \"d\"\n[api]\nlisten = \"127.0.0.1:1\"\n[tls]\ncert=\"c\"\nkey=\"k\"\nca=\"a\"\n";

    /// [`MINIMAL`] followed by `more`, read and validated.
    fn validated(more: &str) -> std::result::Result<Config, Vec<String>> {
        toml::from_str::<FileConfig>(&format!("{MINIMAL}{more}"))
            .unwrap()
            .validate_with(Path::new("/nonexistent"), false)
    }

    #[test]
    fn the_family_section_is_checked() {
        let all =
            validated("[family]\nlisten = \"somewhere\"\npublic_url = \"http://x\"\nname = \"\"\n")
                .unwrap_err()
                .join("\n");
        for needle in ["family.listen", "family.public_url", "family.name"] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        let config = validated(
            "[family]\nlisten = \"127.0.0.1:7430\"\npublic_url = \"https://family.a.test/\"\n",
        )
        .unwrap();
        let family = config.family.expect("enabled");
        assert_eq!(family.public_url.as_deref(), Some("https://family.a.test"));
        assert!(validated("").unwrap().family.is_none());
    }

    #[test]
    fn the_store_cache_defaults_and_is_bounded() {
        let cache = |more: &str| validated(more).map(|c| c.cache_mib);
        assert_eq!(cache("").unwrap(), crate::storage::sled::DEFAULT_CACHE_MIB);
        assert_eq!(cache("[storage]\ncache_mib = 256\n").unwrap(), 256);
        for bad in [0, 65_537] {
            let err = cache(&format!("[storage]\ncache_mib = {bad}\n")).unwrap_err();
            assert_eq!(err, ["storage.cache_mib: must be between 1 and 65536"]);
        }
    }

    #[test]
    fn the_document_cache_defaults_and_is_bounded() {
        let docs = |more: &str| validated(more).map(|c| c.doc_cache);
        assert_eq!(docs("").unwrap(), crate::storage::DEFAULT_DOC_CACHE);
        for good in [0, 20_000, MAX_DOC_CACHE] {
            assert_eq!(
                docs(&format!("[storage]\ndoc_cache = {good}\n")).unwrap(),
                good
            );
        }
        let err = docs("[storage]\ndoc_cache = 1000001\n").unwrap_err();
        assert_eq!(err, ["storage.doc_cache: must be between 0 and 1000000"]);
        // A negative count is refused when the file is read, naming the key.
        let err = toml::from_str::<FileConfig>(&format!("{MINIMAL}[storage]\ndoc_cache = -1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("doc_cache"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "agency = \"Not An Agency\"\ndata_dir = \"d\"\n[api]\nlisten = \"nowhere\"\n[tls]\ncert=\"c\"\nkey=\"k\"\nca=\"a\"\n[storage]\ncompact_after_chunks = 1\ncache_mib = 0\n";
        let file: FileConfig = toml::from_str(text).unwrap();
        let problems = file.validate(Path::new("/nonexistent")).unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "agency:",
            "api.listen",
            "tls.cert",
            "tls.key",
            "tls.ca",
            "compact_after_chunks",
            "cache_mib",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }
}

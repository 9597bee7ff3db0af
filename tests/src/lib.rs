//! Weft's test sandbox: real nodes on 127.0.0.1 with OS-assigned ports, each with its own temp
//! data directory and certificates from a test CA made at run time; gRPC clients over real TLS;
//! deadlines instead of sleeps; and the real `weft` binary for process-level tests.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cluster = weft_tests::Cluster::builder().agencies(["school.test"]).start().await?;
//! let school = cluster.node("school.test");
//! let mut plans = school.plans(&school.coordinator_token).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use weft_node::config::{Config, DataLocation, FederationConfig, PeerConfig, TlsFiles};
use weft_node::model::{now, AgencyId, Role, Timestamp};
use weft_node::server::{open_store, Node};
use weft_node::service::replica::PeerInfo;
use weft_node::service::{bootstrap_user, Clock};
use weft_node::storage::{Backend, Layer, Store, StoreHandle, Tree};
use weft_proto::v1 as pb;

pub use weft_node;
pub use weft_proto;

/// How long `eventually` waits by default.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A free address on 127.0.0.1 for a process that binds it later (a separate process cannot
/// share a pre-bound listener). The port comes from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), so no outgoing connection can take it as its source
/// port in the meantime (a port found by binding port 0 is an ephemeral one, and a
/// long-lived connection of another node could hold it for good), and this process never
/// hands out the same port twice.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u16, ephemeral_low.max(12_000));
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1_000 {
        // A random start per call, so processes started side by side rarely meet.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = low + (h.finish() % u64::from(high - low)) as u16;
        if given.contains(&port) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            given.push(port);
            return Ok(addr);
        }
    }
    bail!("no free port below {high} on 127.0.0.1")
}

/// Polls `check` until it returns `Ok(Some(value))` or the deadline passes.
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A test CA and the certificates it issues, in a temp directory.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A fresh CA.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        weft_node::pki::init_ca(&dir.path().join("ca"), "Weft test CA")?;
        Ok(Self { dir })
    }

    /// Issues (or returns) the certificate files of an agency.
    pub fn issue(&self, agency: &AgencyId) -> anyhow::Result<TlsFiles> {
        let out = self.dir.path().join("nodes").join(agency.as_str());
        Ok(weft_node::pki::issue(
            &self.dir.path().join("ca"),
            agency,
            &out,
            30,
        )?)
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        weft_node::pki::ca_cert_path(&self.dir.path().join("ca"))
    }
}

/// A clock tests can move: the real time plus an offset that only grows.
#[derive(Clone)]
pub struct TestClock(Arc<std::sync::atomic::AtomicI64>);

impl TestClock {
    /// The real time, for now.
    pub fn new() -> Self {
        Self(Arc::new(std::sync::atomic::AtomicI64::new(0)))
    }
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0
            .fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
    }
    /// The time now, by this clock.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_millis(now().as_millis() + self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
    /// As a node clock.
    pub fn clock(&self) -> Clock {
        let c = self.clone();
        Arc::new(move || c.now())
    }
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

/// A channel that sends a bearer token.
pub type Chan = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer …`.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Opens a TLS channel to `addr`, trusting `ca`, sending `token` (if any).
pub async fn channel(addr: SocketAddr, ca: &Path, token: Option<&str>) -> anyhow::Result<Chan> {
    let ca = std::fs::read(ca)?;
    let channel = Channel::from_shared(format!("https://{addr}"))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?
        .connect()
        .await
        .context("connect")?;
    let bearer = Bearer(match token {
        Some(t) => Some(format!("Bearer {t}").parse()?),
        None => None,
    });
    Ok(InterceptedService::new(channel, bearer))
}

/// One node of a test cluster, running in this process.
pub struct TestNode {
    /// The node's agency.
    pub agency: AgencyId,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its certificate files.
    pub tls: TlsFiles,
    /// A coordinator's token.
    pub coordinator_token: String,
    /// An admin's token.
    pub admin_token: String,
    /// The node's clock.
    pub clock: TestClock,
    node: Option<Node>,
    addr: SocketAddr,
    federation: Option<FederationConfig>,
}

/// Binds an address a stopped node just released, retrying while the OS lets go of it.
async fn bind_again(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    eventually(
        "the federation port to be free again",
        DEADLINE,
        || async move { Ok(tokio::net::TcpListener::bind(addr).await.ok()) },
    )
    .await
}

impl TestNode {
    fn config(&self, listen: SocketAddr) -> Config {
        Config {
            agency: self.agency.clone(),
            data: DataLocation::Dir(self.data_dir.clone()),
            api_listen: listen,
            tls: self.tls.clone(),
            compact_after_chunks: 8,
            cache_mib: weft_node::storage::sled::DEFAULT_CACHE_MIB,
            doc_cache: weft_node::storage::DEFAULT_DOC_CACHE,
            signing_key: None,
            federation: self.federation.clone(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            family: Some(weft_node::config::FamilyConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                public_url: None,
                name: None,
            }),
            source_sha256: String::new(),
        }
    }

    /// Starts a node with a coordinator and an admin user, on pre-bound listeners; its store
    /// fails as `faults` says.
    pub async fn start(
        pki: &TestPki,
        agency: &str,
        data_dir: PathBuf,
        api: tokio::net::TcpListener,
        federation: Option<(tokio::net::TcpListener, FederationConfig)>,
        faults: Faults,
    ) -> anyhow::Result<Self> {
        let agency = AgencyId::parse(agency)?;
        let tls = pki.issue(&agency)?;
        std::fs::create_dir_all(&data_dir)?;
        let backend = Arc::new(FaultyBackend {
            inner: Arc::new(weft_node::storage::sled::SledBackend::open(&data_dir)?),
            faults,
        });
        let store = StoreHandle::new(Store::open(backend)?);
        let (_, coordinator_token) =
            bootstrap_user(&store, &agency, "coordinator", Role::Coordinator, now())?;
        let (_, admin_token) = bootstrap_user(&store, &agency, "admin", Role::Admin, now())?;
        let mut node = TestNode {
            agency,
            data_dir,
            tls,
            coordinator_token,
            admin_token,
            clock: TestClock::new(),
            node: None,
            addr: api.local_addr()?,
            federation: federation.as_ref().map(|(_, f)| f.clone()),
        };
        let config = node.config(node.addr);
        let running = Node::start(
            config,
            store,
            node.clock.clock(),
            api,
            federation.map(|(l, _)| l),
        )
        .await?;
        node.addr = running.api_addr();
        node.node = Some(running);
        Ok(node)
    }

    /// The federation listener's address, if any.
    pub fn federation_addr(&self) -> Option<SocketAddr> {
        self.federation.as_ref().map(|f| f.listen)
    }

    /// Replication status of this node's peers (in-process, not audited).
    pub fn peers(&self) -> std::collections::BTreeMap<AgencyId, PeerInfo> {
        self.node().service().peer_status()
    }

    /// The family page's address.
    pub fn family_addr(&self) -> SocketAddr {
        self.node()
            .family_addr()
            .expect("test nodes serve the family page")
    }

    /// The client API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The running node.
    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node is running")
    }

    /// Stops the node (its data stays).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(n) = self.node.take() {
            n.stop().await?;
        }
        Ok(())
    }

    /// Starts the node again on its data directory (on a new port).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let config = self.config(SocketAddr::from(([127, 0, 0, 1], 0)));
        let store = open_store(&config)?;
        // Peers dial the federation address, so it stays the same across restarts.
        let api = tokio::net::TcpListener::bind(config.api_listen).await?;
        let fed = match &config.federation {
            Some(f) => Some(bind_again(f.listen).await?),
            None => None,
        };
        let running = Node::start(config, store, self.clock.clock(), api, fed).await?;
        self.addr = running.api_addr();
        self.node = Some(running);
        Ok(())
    }

    /// A channel with a token.
    pub async fn channel(&self, token: Option<&str>) -> anyhow::Result<Chan> {
        channel(self.addr, &self.tls.ca, token).await
    }

    /// A plan client.
    pub async fn plans(
        &self,
        token: &str,
    ) -> anyhow::Result<pb::plan_service_client::PlanServiceClient<Chan>> {
        Ok(pb::plan_service_client::PlanServiceClient::new(
            self.channel(Some(token)).await?,
        ))
    }

    /// A goal client.
    pub async fn goals(
        &self,
        token: &str,
    ) -> anyhow::Result<pb::goal_service_client::GoalServiceClient<Chan>> {
        Ok(pb::goal_service_client::GoalServiceClient::new(
            self.channel(Some(token)).await?,
        ))
    }

    /// A referral client.
    pub async fn referrals(
        &self,
        token: &str,
    ) -> anyhow::Result<pb::referral_service_client::ReferralServiceClient<Chan>> {
        Ok(pb::referral_service_client::ReferralServiceClient::new(
            self.channel(Some(token)).await?,
        ))
    }

    /// A user client.
    pub async fn users(
        &self,
        token: &str,
    ) -> anyhow::Result<pb::user_service_client::UserServiceClient<Chan>> {
        Ok(pb::user_service_client::UserServiceClient::new(
            self.channel(Some(token)).await?,
        ))
    }

    /// An admin client.
    pub async fn admin(
        &self,
        token: &str,
    ) -> anyhow::Result<pb::admin_service_client::AdminServiceClient<Chan>> {
        Ok(pb::admin_service_client::AdminServiceClient::new(
            self.channel(Some(token)).await?,
        ))
    }

    /// Adds a user through the API (as the admin, or the coordinator for caseworkers and
    /// guardians) and returns its token.
    pub async fn add_user(&self, name: &str, role: &str, plans: &[&str]) -> anyhow::Result<String> {
        self.add_user_of(name, role, plans, None).await
    }

    /// Adds a partner agency's staff member (their `agency`) and returns the token.
    pub async fn add_partner(
        &self,
        name: &str,
        role: &str,
        agency: &str,
    ) -> anyhow::Result<String> {
        self.add_user_of(name, role, &[], Some(agency)).await
    }

    async fn add_user_of(
        &self,
        name: &str,
        role: &str,
        plans: &[&str],
        agency: Option<&str>,
    ) -> anyhow::Result<String> {
        let token = if matches!(role, "caseworker" | "guardian") {
            &self.coordinator_token
        } else {
            &self.admin_token
        };
        let r = self
            .users(token)
            .await?
            .add_user(pb::AddUserRequest {
                name: name.into(),
                role: role.into(),
                plan_ids: plans.iter().map(|p| p.to_string()).collect(),
                agency: agency.unwrap_or_default().into(),
            })
            .await?
            .into_inner();
        Ok(r.token)
    }

    /// Records, as this node's coordinator, a parent's consent for `to` (see
    /// [`grant_request`]) and returns it.
    pub async fn grant_as_coordinator(
        &self,
        plan: &str,
        to: &str,
        sections: &[&str],
        access: &str,
        until: &str,
    ) -> anyhow::Result<pb::ConsentView> {
        Ok(self
            .consents(&self.coordinator_token)
            .await?
            .grant(grant_request(plan, to, sections, access, until))
            .await?
            .into_inner())
    }

    /// A consent client.
    pub async fn consents(
        &self,
        token: &str,
    ) -> anyhow::Result<pb::consent_service_client::ConsentServiceClient<Chan>> {
        Ok(pb::consent_service_client::ConsentServiceClient::new(
            self.channel(Some(token)).await?,
        ))
    }

    /// Invites a guardian to the family page for `plan`, as the coordinator, through the
    /// API; returns the invitation link.
    pub async fn invite_guardian(
        &self,
        plan: &str,
        name: &str,
        relationship: &str,
    ) -> anyhow::Result<String> {
        Ok(self
            .users(&self.coordinator_token)
            .await?
            .invite_guardian(pb::InviteGuardianRequest {
                plan_id: plan.into(),
                name: name.into(),
                relationship: relationship.into(),
            })
            .await?
            .into_inner()
            .link)
    }

    /// Creates a plan as the coordinator; returns its id.
    pub async fn create_plan(&self, given: &str, family: &str) -> anyhow::Result<String> {
        let r = self
            .plans(&self.coordinator_token)
            .await?
            .create_plan(pb::CreatePlanRequest {
                given_name: given.into(),
                family_name: family.into(),
                date_of_birth: String::new(),
                fields: vec![],
            })
            .await?
            .into_inner();
        Ok(r.plan.context("plan")?.plan_id)
    }

    /// Reads one section's content as JSON, as `token`.
    pub async fn section(
        &self,
        token: &str,
        plan: &str,
        section: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let r = self
            .plans(token)
            .await?
            .get_plan(pb::GetPlanRequest {
                plan_id: plan.into(),
                sections: vec![section.into()],
            })
            .await?
            .into_inner();
        let s = r
            .sections
            .into_iter()
            .next()
            .context("no section in answer")?;
        Ok(serde_json::from_str(&s.content_json)?)
    }

    /// The node's counters, as the admin.
    pub async fn status(&self) -> anyhow::Result<pb::StatusResponse> {
        Ok(self
            .admin(&self.admin_token)
            .await?
            .status(pb::StatusRequest {})
            .await?
            .into_inner())
    }
}

/// A set of nodes, each in its own temp directory.
pub struct Cluster {
    /// Keeps the temp directories alive.
    _dir: tempfile::TempDir,
    /// The test CA.
    pub pki: TestPki,
    _other_pki: TestPki,
    nodes: Vec<TestNode>,
}

/// Builds a [`Cluster`].
pub struct ClusterBuilder {
    agencies: Vec<String>,
    foreign: Vec<String>,
    played: Vec<String>,
    faults: Vec<(String, Faults)>,
}

impl Cluster {
    /// A builder.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            agencies: vec!["school.test".into()],
            foreign: vec![],
            played: vec![],
            faults: vec![],
        }
    }

    /// The node of an agency.
    pub fn node(&self, agency: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.agency.as_str() == agency)
            .expect("no such agency in the cluster")
    }

    /// The node of an agency, mutably (to stop or restart it).
    pub fn node_mut(&mut self, agency: &str) -> &mut TestNode {
        self.nodes
            .iter_mut()
            .find(|n| n.agency.as_str() == agency)
            .expect("no such agency in the cluster")
    }

    /// Opens a federation stream to `to`'s node as agency `as_agency`, with a certificate
    /// from the cluster's CA (or `ca` of your choosing). Returns the sender for our frames
    /// and the stream of the node's frames.
    pub async fn peer_stream(
        &self,
        as_agency: &str,
        to: &str,
    ) -> anyhow::Result<(tokio::sync::mpsc::Sender<pb::Frame>, PeerFrames)> {
        let files = self.pki.issue(&AgencyId::parse(as_agency)?)?;
        peer_stream(&files, self.node(to)).await
    }

    /// Stops every node.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            n.stop().await?;
        }
        Ok(())
    }
}

impl ClusterBuilder {
    /// The agencies to run.
    pub fn agencies<I: IntoIterator<Item = S>, S: Into<String>>(mut self, agencies: I) -> Self {
        self.agencies = agencies.into_iter().map(Into::into).collect();
        self
    }

    /// Agencies whose certificates come from another CA (they try to federate, and must be
    /// refused).
    pub fn foreign_ca<I: IntoIterator<Item = S>, S: Into<String>>(mut self, agencies: I) -> Self {
        self.foreign = agencies.into_iter().map(Into::into).collect();
        self
    }

    /// Store faults the test can turn on in `agency`'s node.
    pub fn faults(mut self, agency: &str, faults: Faults) -> Self {
        self.faults.push((agency.into(), faults));
        self
    }

    /// Agencies configured as peers of every node, but played by the test itself through
    /// [`Cluster::peer_stream`] (to send what a well-behaved node never would).
    pub fn played_by_test<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        agencies: I,
    ) -> Self {
        self.played = agencies.into_iter().map(Into::into).collect();
        self
    }

    /// Starts the nodes; with more than one agency, each lists all the others as peers.
    pub async fn start(self) -> anyhow::Result<Cluster> {
        weft_node::server::install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let pki = TestPki::new()?;
        let other_pki = TestPki::new()?;
        let all: Vec<String> = self
            .agencies
            .iter()
            .chain(&self.foreign)
            .chain(&self.played)
            .cloned()
            .collect();
        let mut listeners = Vec::new();
        for _ in &all {
            let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let fed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            listeners.push((api, fed));
        }
        let fed_addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|(_, f)| f.local_addr())
            .collect::<Result<_, _>>()?;
        let mut nodes = Vec::new();
        for (i, ((a, (api, fed)), addr)) in all.iter().zip(listeners).zip(&fed_addrs).enumerate() {
            let federation = (all.len() > 1).then(|| FederationConfig {
                listen: *addr,
                peers: all
                    .iter()
                    .zip(&fed_addrs)
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (p, addr))| PeerConfig {
                        agency: AgencyId::parse(p).expect("test agency ids parse"),
                        endpoint: format!("https://{addr}"),
                        name: None,
                    })
                    .collect(),
            });
            if self.played.contains(a) {
                continue;
            }
            let issuer = if self.foreign.contains(a) {
                &other_pki
            } else {
                &pki
            };
            let faults = self
                .faults
                .iter()
                .find(|(agency, _)| agency == a)
                .map(|(_, f)| f.clone())
                .unwrap_or_default();
            let node = TestNode::start(
                issuer,
                a,
                dir.path().join(a),
                api,
                federation.map(|f| (fed, f)),
                faults,
            )
            .await?;
            nodes.push(node);
        }
        Ok(Cluster {
            _dir: dir,
            pki,
            _other_pki: other_pki,
            nodes,
        })
    }
}

/// Store faults a test turns on and off while a node runs: reads of the keys of one tree
/// that start with a prefix fail, and scans of one tree are slow.
#[derive(Clone, Default)]
pub struct Faults {
    failing: Arc<std::sync::Mutex<Option<FailingReads>>>,
    slow: Arc<std::sync::Mutex<Option<(Tree, std::time::Duration)>>>,
}

/// The tree, and the key prefix whose reads fail.
type FailingReads = (Tree, Vec<u8>);

impl Faults {
    /// From now on, reads of `tree` keys starting with `prefix` fail.
    pub fn fail_reads(&self, tree: Tree, prefix: &[u8]) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = Some((tree, prefix.to_vec()));
    }

    /// From now on, each scan of `tree` takes `delay` longer (a large store, on a slow
    /// disk).
    pub fn slow_scans(&self, tree: Tree, delay: std::time::Duration) {
        *self.slow.lock().unwrap_or_else(|e| e.into_inner()) = Some((tree, delay));
    }

    /// From now on, nothing fails and nothing is slow.
    pub fn clear(&self) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.slow.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn delay(&self, tree: Tree) {
        let slow = *self.slow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, d)) = slow {
            if t == tree {
                std::thread::sleep(d);
            }
        }
    }

    fn check(&self, tree: Tree, key: &[u8]) -> weft_node::error::Result<()> {
        match &*self.failing.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((t, prefix)) if *t == tree && key.starts_with(prefix) => Err(
                weft_node::error::Error::Storage("injected read failure".into()),
            ),
            _ => Ok(()),
        }
    }
}

/// A store backend that fails as its [`Faults`] say.
struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Faults,
}

impl Layer for FaultyBackend {
    fn inner(&self) -> &dyn Backend {
        self.inner.as_ref()
    }

    fn get(&self, tree: Tree, key: &[u8]) -> weft_node::error::Result<Option<Vec<u8>>> {
        self.faults.check(tree, key)?;
        self.inner.get(tree, key)
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> weft_node::error::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.faults.delay(tree);
        self.inner.scan(tree, prefix, after, limit)
    }
}

/// Opens a federation stream to `node` with the certificate `files`.
pub async fn peer_stream(
    files: &TlsFiles,
    node: &TestNode,
) -> anyhow::Result<(tokio::sync::mpsc::Sender<pb::Frame>, PeerFrames)> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&files.ca)?))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&files.cert)?,
            std::fs::read(&files.key)?,
        ))
        .domain_name(node.agency.as_str());
    let addr = node
        .federation_addr()
        .context("the node has no federation listener")?;
    let channel = Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut client = pb::federation_client::FederationClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let inbound = client
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((
        tx,
        PeerFrames {
            inner: inbound,
            queued: Default::default(),
        },
    ))
}

/// What a node sends a raw peer stream, one frame at a time: a node sends the frames that
/// were ready together as one batch, opened here.
#[derive(Debug)]
pub struct PeerFrames {
    inner: tonic::Streaming<pb::Frame>,
    queued: std::collections::VecDeque<pb::Frame>,
}

impl PeerFrames {
    /// The next frame; `None` when the stream ends.
    pub async fn message(&mut self) -> Result<Option<pb::Frame>, tonic::Status> {
        loop {
            if let Some(f) = self.queued.pop_front() {
                return Ok(Some(f));
            }
            match self.inner.message().await? {
                Some(pb::Frame {
                    kind: Some(pb::frame::Kind::Batch(b)),
                }) => self.queued.extend(b.frames),
                other => return Ok(other),
            }
        }
    }
}

/// A consent request as a coordinator records a parent's paper form, for `care_coordination`.
pub fn grant_request(
    plan: &str,
    to: &str,
    sections: &[&str],
    access: &str,
    until: &str,
) -> pb::GrantRequest {
    pb::GrantRequest {
        plan_id: plan.into(),
        grantee_agency: to.into(),
        sections: sections.iter().map(|s| s.to_string()).collect(),
        access: access.into(),
        purpose: "care_coordination".into(),
        valid_from: String::new(),
        valid_until: until.into(),
        grantor_name: "Rosa Example".into(),
        relationship: "parent".into(),
        method: "paper_form".into(),
    }
}

/// Every file under `dir` whose raw bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)?
                .windows(needle.len())
                .any(|w| w == needle)
            {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// The `weft` binary of this build, built on first use (`cargo build -p weft-node -p weft-bench
/// --bin weft` with this test binary's profile), so process tests never run a stale binary.
///
/// Naming `weft-bench` too gives the build the bench's feature set, so the test run and the
/// benchmark share one build of the node and its dependencies instead of two.
///
/// `WEFT_BIN`, when set, names the binary to run instead (nothing is built): to compare two
/// builds of the node under one harness.
pub fn weft_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("WEFT_BIN") {
            let bin = PathBuf::from(bin);
            return match bin.is_file() {
                true => Ok(bin),
                false => Err(format!("WEFT_BIN: no binary at {}", bin.display())),
            };
        }
        // Test binaries live in target/<profile>/deps/, other binaries (weft-bench) in
        // target/<profile>/.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut profile_dir = exe
            .parent()
            .ok_or("cannot find the target directory")?
            .to_path_buf();
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir.pop();
        }
        let target_dir = profile_dir
            .parent()
            .ok_or("cannot find the target directory")?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "weft-node",
            "-p",
            "weft-bench",
            "--bin",
            "weft",
            "--target-dir",
        ])
        .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err("building the weft binary failed".into());
        }
        let bin = profile_dir.join(format!("weft{}", std::env::consts::EXE_SUFFIX));
        if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("no binary at {}", bin.display()))
        }
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// A `weft serve` process with its own config, data directory and certificates.
pub struct WeftProcess {
    /// The child process.
    pub child: Child,
    /// The client API address.
    pub addr: SocketAddr,
    /// The config file.
    pub config: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
}

impl WeftProcess {
    /// Writes a config for `agency` in `dir` (certificates from `pki`) on a free port.
    pub fn configure(
        pki: &TestPki,
        agency: &str,
        dir: &Path,
    ) -> anyhow::Result<(PathBuf, SocketAddr, PathBuf)> {
        let agency = AgencyId::parse(agency)?;
        let tls = pki.issue(&agency)?;
        let addr = free_addr()?;
        let config = dir.join("weft.toml");
        std::fs::write(
            &config,
            weft_node::config::render(&agency, &dir.join("data"), addr, &tls, None),
        )?;
        Ok((config, addr, tls.ca))
    }

    /// Writes configs for `agencies` federated with each other, each in `dir/<agency>/`, on
    /// free ports ([`free_addr`]). Returns (config, client API address, CA) per agency.
    pub fn configure_federation(
        pki: &TestPki,
        agencies: &[&str],
        dir: &Path,
    ) -> anyhow::Result<Vec<(PathBuf, SocketAddr, PathBuf)>> {
        let addrs: Vec<(SocketAddr, SocketAddr)> = agencies
            .iter()
            .map(|_| Ok((free_addr()?, free_addr()?)))
            .collect::<anyhow::Result<_>>()?;
        let mut out = Vec::new();
        for (i, a) in agencies.iter().enumerate() {
            let agency = AgencyId::parse(a)?;
            let tls = pki.issue(&agency)?;
            let federation = FederationConfig {
                listen: addrs[i].1,
                peers: agencies
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, p)| PeerConfig {
                        agency: AgencyId::parse(p).expect("test agency ids parse"),
                        endpoint: format!("https://{}", addrs[j].1),
                        name: None,
                    })
                    .collect(),
            };
            let home = dir.join(a);
            std::fs::create_dir_all(&home)?;
            let config = home.join("weft.toml");
            std::fs::write(
                &config,
                weft_node::config::render(
                    &agency,
                    &home.join("data"),
                    addrs[i].0,
                    &tls,
                    Some(&federation),
                ),
            )?;
            out.push((config, addrs[i].0, tls.ca));
        }
        Ok(out)
    }

    /// Where a node started by [`WeftProcess::start`] with `config` writes its log (appended
    /// to across restarts): `weft.log` beside the config.
    pub fn log_path(config: &Path) -> PathBuf {
        config.with_file_name("weft.log")
    }

    /// The last `lines` lines of this node's log, for a failure's message.
    pub fn log_tail(config: &Path, lines: usize) -> String {
        let text = std::fs::read_to_string(Self::log_path(config)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts `weft serve --config FILE` and waits until the API answers; its log goes to
    /// [`WeftProcess::log_path`]. A process that exits before answering is started again
    /// (twice at most): another process may have bound its port since the config was
    /// written.
    pub async fn start(config: &Path, addr: SocketAddr, ca: &Path) -> anyhow::Result<Self> {
        let mut exits = Vec::new();
        while exits.len() < 3 {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(Self::log_path(config))?;
            let mut child = Command::new(weft_bin()?)
                .args(["serve", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            let started = std::time::Instant::now();
            loop {
                if channel(addr, ca, None).await.is_ok() {
                    return Ok(WeftProcess {
                        child,
                        addr,
                        config: config.to_path_buf(),
                        ca: ca.to_path_buf(),
                    });
                }
                if let Some(status) = child.try_wait()? {
                    exits.push(status.to_string());
                    break;
                }
                if started.elapsed() > DEADLINE {
                    let _ = child.kill();
                    bail!(
                        "timed out after {DEADLINE:?} waiting for weft serve to answer; its log ends:\n{}",
                        Self::log_tail(config, 20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "weft serve exited before answering, {} times: {}; its log ends:\n{}",
            exits.len(),
            exits.join(", "),
            Self::log_tail(config, 20)
        )
    }

    /// Runs the `weft` CLI with `args` against this node as `token`; returns stdout or an
    /// error carrying stderr.
    pub fn cli(&self, token: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(weft_bin()?)
            .args(args)
            .env("WEFT_NODE", format!("https://{}", self.addr))
            .env("WEFT_CA", &self.ca)
            .env("WEFT_TOKEN", token)
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8(out.stdout)?)
        } else {
            bail!(
                "weft {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for WeftProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `weft` with `args` (no node), returning (success, stdout, stderr).
pub fn weft(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(weft_bin()?).args(args).output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

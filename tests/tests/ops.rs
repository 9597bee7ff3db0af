//! What operators and their tools see: the standard gRPC health service and server
//! reflection on the client API port, over TLS.

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use weft_tests::Cluster;

#[tokio::test]
async fn health_and_reflection_answer_on_the_api_port() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let chan = school.channel(None).await?;

    let mut health = HealthClient::new(chan.clone());
    for service in ["", "weft.v1.PlanService", "weft.v1.ConsentService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "weft.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(chan);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    let answer = answers.message().await?.expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        anyhow::bail!("unexpected reflection answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "weft.v1.PlanService",
        "weft.v1.ConsentService",
        "weft.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    cluster.stop().await
}

#[tokio::test]
async fn status_warns_of_an_expiring_certificate_and_unreachable_peers() -> anyhow::Result<()> {
    // The sandbox's certificates are valid for 30 days; "clinic.test" is configured but never runs.
    let cluster = Cluster::builder()
        .agencies(["school.test"])
        .played_by_test(["clinic.test"])
        .start()
        .await?;
    let school = cluster.node("school.test");
    let st = school.status().await?;
    assert!(st.certificate_expires_ms > 0);
    assert!(
        st.warnings
            .iter()
            .any(|w| w.contains("certificate expires in 29 days")),
        "{:?}",
        st.warnings
    );
    assert!(
        st.warnings
            .iter()
            .any(|w| w.starts_with("peer clinic.test unreachable")),
        "{:?}",
        st.warnings
    );
    assert_eq!(st.peers.len(), 1);
    assert!(!st.peers[0].connected);
    cluster.stop().await
}

/// `GET /metrics` from a node's metrics port.
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    anyhow::ensure!(out.starts_with("HTTP/1.1 200"), "{out}");
    Ok(out)
}

#[tokio::test]
async fn metrics_count_requests_denials_and_store_without_student_data() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Maya", "Example").await?;
    school
        .section(&school.coordinator_token, &plan, "goals")
        .await?;
    assert!(school
        .section(&school.admin_token, &plan, "goals")
        .await
        .is_err());
    let text = scrape(
        school
            .node()
            .metrics_addr()
            .expect("metrics are on in the sandbox"),
    )
    .await?;
    for line in [
        "weft_rpc_requests_total{rpc=\"CreatePlan\",code=\"OK\"} 1",
        "weft_rpc_requests_total{rpc=\"GetPlan\",code=\"OK\"} 1",
        "weft_rpc_requests_total{rpc=\"GetPlan\",code=\"PERMISSION_DENIED\"} 1",
        "weft_denials_total{rule=\"role\"} 1",
        "weft_plans 1",
        "weft_rpc_duration_seconds_count{rpc=\"GetPlan\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "`{line}` missing from:\n{text}"
        );
    }
    // Creating the plan wrote its profile, whose document the cache keeps.
    let cached: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("weft_documents_cached "))
        .and_then(|v| v.parse().ok())
        .expect("weft_documents_cached in the metrics");
    assert!(cached >= 1, "{text}");
    assert!(!text.contains(&plan), "a plan id leaked into metrics");
    assert!(!text.contains("Maya"));
    cluster.stop().await
}

/// The end-entity certificate a TLS server at `addr` presents now.
async fn presented_certificate(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = connector
        .connect(rustls::pki_types::ServerName::try_from("school.test")?, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    Ok(conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default())
}

#[tokio::test]
async fn a_new_certificate_is_used_without_a_restart() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Maya", "Example").await?;
    let old_channel = school.plans(&school.coordinator_token).await?;
    let before = presented_certificate(school.addr(), &school.tls.ca).await?;

    // Issue a new certificate into the same files (as an operator would), then reload.
    cluster.pki.issue(&school.agency)?;
    let on_disk = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(&school.tls.cert)?.to_vec()
    };
    assert_ne!(
        before, on_disk,
        "the test must actually change the certificate"
    );
    school.node().reload_tls()?;
    let after = presented_certificate(school.addr(), &school.tls.ca).await?;
    assert_eq!(after, on_disk, "new connections get the new certificate");

    // Connections opened before the reload keep working, and new clients work too.
    let mut old_channel = old_channel;
    old_channel
        .get_plan(weft_proto::v1::GetPlanRequest {
            plan_id: plan.clone(),
            sections: vec![],
        })
        .await?;
    school
        .section(&school.coordinator_token, &plan, "profile")
        .await?;

    // A key that does not belong to the certificate is refused (it would break every
    // handshake), and so is a broken file; the node keeps its certificate.
    let other = cluster
        .pki
        .issue(&weft_node::model::AgencyId::parse("other.test")?)?;
    let good_key = std::fs::read(&school.tls.key)?;
    std::fs::copy(&other.key, &school.tls.key)?;
    let err = school.node().reload_tls().unwrap_err().to_string();
    assert!(err.contains("does not belong to the certificate"), "{err}");
    std::fs::write(&school.tls.key, good_key)?;
    assert_eq!(
        presented_certificate(school.addr(), &school.tls.ca).await?,
        on_disk
    );

    std::fs::write(&school.tls.cert, "not a certificate")?;
    assert!(school.node().reload_tls().is_err());
    assert_eq!(
        presented_certificate(school.addr(), &school.tls.ca).await?,
        on_disk
    );
    cluster.stop().await
}

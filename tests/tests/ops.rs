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

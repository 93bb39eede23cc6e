//! The webhook's serving certificate against the mock API: provisioning the Secret (fresh,
//! kept while valid, lost race), cert-manager mode, and the caBundle patch.

use http::Method;
use openmatch_gossip_operator::webhook_cert::{self, CertSource, DNS_NAMES_ANNOTATION, NOT_AFTER_ANNOTATION};
use serde_json::json;

use crate::common::mock_client;

const SECRET_PATH: &str = "/api/v1/namespaces/gossip-system/secrets/omg-webhook-tls";
const CONFIG_PATH: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/omg-injector";

fn source(provision: bool) -> CertSource {
    CertSource {
        namespace: "gossip-system".into(),
        secret: "omg-webhook-tls".into(),
        service: "omg-webhook".into(),
        provision: provision.then(|| "omg-injector".into()),
    }
}

fn b64(s: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap().as_str().unwrap().to_owned()
}

#[tokio::test]
async fn provisions_a_missing_secret_then_keeps_it() {
    let (client, mut server) = mock_client();
    let now = time::OffsetDateTime::now_utc();
    let c = client.clone();
    let run = tokio::spawn(async move { webhook_cert::ensure(&c, &source(true), now).await });
    server.expect(Method::GET, SECRET_PATH).await.error(404, "NotFound", "secrets \"omg-webhook-tls\" not found");
    let create = server.expect(Method::POST, "/api/v1/namespaces/gossip-system/secrets").await;
    let written = create.body.clone();
    assert_eq!(written["type"], "kubernetes.io/tls");
    assert_eq!(
        written["metadata"]["annotations"][DNS_NAMES_ANNOTATION],
        "omg-webhook,omg-webhook.gossip-system,omg-webhook.gossip-system.svc,omg-webhook.gossip-system.svc.cluster.local"
    );
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(written["data"][key].is_string(), "{key} missing: {written}");
    }
    create.echo();
    let pem = server.settle(run).await.unwrap();
    assert!(pem.cert.contains("BEGIN CERTIFICATE") && pem.ca.is_some());

    // A second replica (or the next round) reads it and writes nothing.
    let c = client.clone();
    let run = tokio::spawn(async move { webhook_cert::ensure(&c, &source(true), now).await });
    let mut existing = written.clone();
    existing["metadata"]["resourceVersion"] = json!("7");
    server.expect(Method::GET, SECRET_PATH).await.ok(existing);
    assert_eq!(server.settle(run).await.unwrap(), pem);

    // Near its expiry it is replaced (with the resourceVersion read).
    let later = now + time::Duration::days(340);
    let c = client.clone();
    let run = tokio::spawn(async move { webhook_cert::ensure(&c, &source(true), later).await });
    let mut existing = written.clone();
    existing["metadata"]["resourceVersion"] = json!("7");
    server.expect(Method::GET, SECRET_PATH).await.ok(existing);
    let replace = server.expect(Method::PUT, SECRET_PATH).await;
    assert_eq!(replace.body["metadata"]["resourceVersion"], "7");
    assert_ne!(replace.body["data"]["tls.crt"], written["data"]["tls.crt"], "a new certificate");
    replace.echo();
    let renewed = server.settle(run).await.unwrap();
    assert_ne!(renewed, pem);
    drop(client);
    server.assert_no_more_requests().await;
}

#[tokio::test]
async fn a_lost_race_takes_the_winners_secret() {
    let (client, mut server) = mock_client();
    let now = time::OffsetDateTime::now_utc();
    let c = client.clone();
    let run = tokio::spawn(async move { webhook_cert::ensure(&c, &source(true), now).await });
    server.expect(Method::GET, SECRET_PATH).await.error(404, "NotFound", "not found");
    let create = server.expect(Method::POST, "/api/v1/namespaces/gossip-system/secrets").await;
    let mut winner = create.body.clone();
    winner["data"]["tls.crt"] = json!(b64("WINNER CERT"));
    winner["metadata"]["annotations"][NOT_AFTER_ANNOTATION] = json!("2099-01-01T00:00:00Z");
    create.error(409, "AlreadyExists", "secrets \"omg-webhook-tls\" already exists");
    server.expect(Method::GET, SECRET_PATH).await.ok(winner);
    let pem = server.settle(run).await.unwrap();
    assert_eq!(pem.cert, "WINNER CERT");
}

#[tokio::test]
async fn under_cert_manager_the_secret_is_only_read() {
    let (client, mut server) = mock_client();
    let now = time::OffsetDateTime::now_utc();
    let c = client.clone();
    let run = tokio::spawn(async move { webhook_cert::ensure(&c, &source(false), now).await });
    server.expect(Method::GET, SECRET_PATH).await.error(404, "NotFound", "not found");
    let e = server.settle(run).await.unwrap_err();
    assert!(format!("{e:#}").contains("cert-manager issues it"), "{e:#}");

    let c = client.clone();
    let run = tokio::spawn(async move { webhook_cert::ensure(&c, &source(false), now).await });
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "omg-webhook-tls", "namespace": "gossip-system"},
        "data": {"tls.crt": b64("C"), "tls.key": b64("K")}});
    server.expect(Method::GET, SECRET_PATH).await.ok(secret);
    let pem = server.settle(run).await.unwrap();
    assert_eq!((pem.cert.as_str(), pem.key.as_str(), pem.ca), ("C", "K", None));
}

#[tokio::test]
async fn ca_bundle_is_patched_only_where_it_differs() {
    let (client, mut server) = mock_client();
    let config = |bundle: Option<&str>| {
        let mut client_config =
            json!({"service": {"name": "omg-webhook", "namespace": "gossip-system", "path": "/mutate-pods"}});
        if let Some(b) = bundle {
            client_config["caBundle"] = json!(b64(b));
        }
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "omg-injector"},
            "webhooks": [{"name": "inject.gossip.openmatch.io", "clientConfig": client_config,
                "admissionReviewVersions": ["v1"], "sideEffects": "None"}]})
    };
    let c = client.clone();
    let run = tokio::spawn(async move { webhook_cert::publish_ca_bundle(&c, "omg-injector", "NEW CA").await });
    server.expect(Method::GET, CONFIG_PATH).await.ok(config(Some("OLD CA")));
    let patch = server.expect(Method::PATCH, CONFIG_PATH).await;
    assert_eq!(patch.content_type.as_deref(), Some("application/json-patch+json"));
    assert_eq!(
        patch.body,
        json!([{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": b64("NEW CA")}])
    );
    patch.ok(config(Some("NEW CA")));
    assert!(server.settle(run).await.unwrap());

    let c = client.clone();
    let run = tokio::spawn(async move { webhook_cert::publish_ca_bundle(&c, "omg-injector", "NEW CA").await });
    server.expect(Method::GET, CONFIG_PATH).await.ok(config(Some("NEW CA")));
    assert!(!server.settle(run).await.unwrap(), "nothing to change");
}

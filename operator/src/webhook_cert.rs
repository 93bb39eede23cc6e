//! The admission webhook's serving certificate: a private CA and a serving certificate
//! for the webhook Service's DNS names, generated with `rcgen`, kept in a Secret of type
//! `kubernetes.io/tls` (keys `tls.crt`, `tls.key` and `ca.crt`, the layout cert-manager
//! writes too, so either can provide it).
//!
//! The API server verifies the webhook's certificate against the `caBundle` of the
//! MutatingWebhookConfiguration; whoever creates the Secret also sets that bundle (the
//! operator in self-provisioning mode, cert-manager's CA injector otherwise).
//!
//! Lifetimes: the CA 10 years, the serving certificate 1 year; the operator replaces
//! both when less than 30 days are left ([`RENEW_BEFORE`]) or when the DNS names changed.
//!
//! [`ensure`] provisions (or, under cert-manager, only reads) the Secret; [`publish_ca_bundle`]
//! writes the CA into the webhook configuration; [`keep_current`] does both every minute
//! on every replica and swaps the server's TLS configuration when the certificate changes.
//! Two replicas creating the Secret at once is settled by the API server: the loser's
//! create or replace fails with 409 and it takes the winner's Secret.

use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::webhook::TlsConfig;

/// Secret annotation: when the serving certificate expires (RFC 3339), written by the
/// operator when it provisions the Secret.
pub const NOT_AFTER_ANNOTATION: &str = "gossip.openmatch.io/not-after";
/// Secret annotation: the serving certificate's DNS names, comma-separated.
pub const DNS_NAMES_ANNOTATION: &str = "gossip.openmatch.io/dns-names";
/// How often every replica re-reads the Secret (and renews it, when provisioning).
pub const REFRESH: Duration = Duration::from_secs(60);

/// Validity of the generated CA.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of the generated serving certificate.
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A certificate with less than this left is replaced.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A CA and a serving certificate signed by it, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCert {
    /// The CA certificate (the `caBundle`).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key (PKCS#8).
    pub key_pem: String,
    /// When the serving certificate expires.
    pub not_after: OffsetDateTime,
    /// Its DNS names.
    pub dns_names: Vec<String>,
}

/// The DNS names the API server may use for Service `service` in `namespace`.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Generates a new CA and a serving certificate for `dns_names`, valid from `now`.
///
/// Errors: a DNS name rcgen refuses, or key generation failing.
pub fn generate(dns_names: &[String], now: OffsetDateTime) -> anyhow::Result<ServingCert> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca.distinguished_name.push(DnType::CommonName, "openmatch-gossip webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - time::Duration::minutes(5);
    ca.not_after = now + CA_VALIDITY;
    let ca_cert = ca.self_signed(&ca_key).context("self-signing the CA")?;

    let key = KeyPair::generate().context("generating the serving key")?;
    let mut params = CertificateParams::new(dns_names.to_vec()).context("serving certificate parameters")?;
    params.distinguished_name.push(DnType::CommonName, dns_names.first().cloned().unwrap_or_default());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::minutes(5);
    let not_after = now + SERVING_VALIDITY;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &ca_cert, &ca_key).context("signing the serving certificate")?;
    Ok(ServingCert {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
        dns_names: dns_names.to_vec(),
    })
}

/// Whether a certificate expiring at `not_after` for `have` names must be replaced at `now`
/// to serve `want`.
pub fn needs_renewal(not_after: OffsetDateTime, have: &[String], want: &[String], now: OffsetDateTime) -> bool {
    not_after - now < RENEW_BEFORE || have != want
}

/// A rustls server configuration serving `cert` (HTTP/1.1 only, as the API server speaks
/// to webhooks).
///
/// Errors: PEM that does not parse, or a key that does not match.
pub fn server_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing tls.crt")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("parsing tls.key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("tls.crt and tls.key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Where the serving certificate lives and who manages it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSource {
    /// Namespace of the Secret and the webhook Service (the operator's own).
    pub namespace: String,
    /// Name of the `kubernetes.io/tls` Secret.
    pub secret: String,
    /// Name of the webhook Service (its DNS names go into the certificate).
    pub service: String,
    /// `Some(name)`: the operator creates and renews the Secret and writes the CA into the
    /// MutatingWebhookConfiguration `name`. `None`: cert-manager does both; the operator
    /// only reads the Secret.
    pub provision: Option<String>,
}

/// The Secret's serving certificate, key and CA, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pem {
    /// `tls.crt`.
    pub cert: String,
    /// `tls.key`.
    pub key: String,
    /// `ca.crt`, if present.
    pub ca: Option<String>,
}

fn data(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn pem_of(secret: &Secret) -> Option<Pem> {
    Some(Pem { cert: data(secret, "tls.crt")?, key: data(secret, "tls.key")?, ca: data(secret, "ca.crt") })
}

/// Whether a Secret the operator provisioned still serves `want` at `now`.
fn still_good(secret: &Secret, want: &[String], now: OffsetDateTime) -> bool {
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let Some(not_after) = annotations.get(NOT_AFTER_ANNOTATION).and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    else {
        return false;
    };
    let have: Vec<String> =
        annotations.get(DNS_NAMES_ANNOTATION).map(|n| n.split(',').map(str::to_owned).collect()).unwrap_or_default();
    pem_of(secret).is_some() && !needs_renewal(not_after, &have, want, now)
}

/// The Secret holding `cert`.
fn to_secret(src: &CertSource, cert: &ServingCert, resource_version: Option<String>) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut secret = Secret::default();
    secret.metadata.name = Some(src.secret.clone());
    secret.metadata.namespace = Some(src.namespace.clone());
    secret.metadata.resource_version = resource_version;
    secret.metadata.labels = Some(BTreeMap::from([(
        crate::children::MANAGED_BY_LABEL.to_owned(),
        crate::children::FIELD_MANAGER.to_owned(),
    )]));
    secret.metadata.annotations = Some(BTreeMap::from([
        (NOT_AFTER_ANNOTATION.to_owned(), cert.not_after.format(&Rfc3339).expect("a valid time")),
        (DNS_NAMES_ANNOTATION.to_owned(), cert.dns_names.join(",")),
    ]));
    secret.type_ = Some("kubernetes.io/tls".into());
    secret.data = Some(BTreeMap::from([
        ("tls.crt".to_owned(), bytes(&cert.cert_pem)),
        ("tls.key".to_owned(), bytes(&cert.key_pem)),
        ("ca.crt".to_owned(), bytes(&cert.ca_pem)),
    ]));
    secret
}

/// The serving certificate from the Secret: when provisioning, created if absent and
/// replaced when expiring or for other DNS names; under cert-manager, read as it is.
///
/// Errors: the API fails; under cert-manager, the Secret is missing or lacks `tls.crt` /
/// `tls.key` (cert-manager has not issued it yet).
pub async fn ensure(client: &Client, src: &CertSource, now: OffsetDateTime) -> anyhow::Result<Pem> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &src.namespace);
    let existing = api.get_opt(&src.secret).await.with_context(|| format!("reading Secret {}", src.secret))?;
    if src.provision.is_none() {
        let Some(secret) = existing else {
            bail!("Secret {}/{} does not exist yet (cert-manager issues it)", src.namespace, src.secret)
        };
        return pem_of(&secret)
            .with_context(|| format!("Secret {}/{} lacks tls.crt or tls.key", src.namespace, src.secret));
    }
    let want = dns_names(&src.service, &src.namespace);
    if let Some(secret) = existing.as_ref().filter(|s| still_good(s, &want, now)) {
        return Ok(pem_of(secret).expect("checked by still_good"));
    }
    let cert = generate(&want, now)?;
    let version = existing.as_ref().and_then(|s| s.metadata.resource_version.clone());
    let secret = to_secret(src, &cert, version.clone());
    let written = match version {
        None => api.create(&PostParams::default(), &secret).await,
        Some(_) => api.replace(&src.secret, &PostParams::default(), &secret).await,
    };
    match written {
        Ok(s) => {
            tracing::info!(secret = %src.secret, not_after = %cert.not_after, "webhook serving certificate written");
            Ok(pem_of(&s).unwrap_or(Pem { cert: cert.cert_pem, key: cert.key_pem, ca: Some(cert.ca_pem) }))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Another replica wrote it first: use theirs.
            let s = api.get(&src.secret).await.with_context(|| format!("re-reading Secret {}", src.secret))?;
            pem_of(&s).with_context(|| format!("Secret {} lacks tls.crt or tls.key", src.secret))
        }
        Err(e) => Err(e).with_context(|| format!("writing Secret {}", src.secret)),
    }
}

/// Writes `ca_pem` as the `caBundle` of every webhook of MutatingWebhookConfiguration
/// `name` that does not hold it yet (one JSON patch); returns whether anything changed.
///
/// Errors: the configuration is missing, or the API fails.
pub async fn publish_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> anyhow::Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = api.get(name).await.with_context(|| format!("reading MutatingWebhookConfiguration {name}"))?;
    let mut ops = Vec::new();
    for (i, w) in config.webhooks.iter().flatten().enumerate() {
        if w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_pem.as_bytes()) {
            let value = serde_json::to_value(ByteString(ca_pem.as_bytes().to_vec())).expect("bytes serialize");
            let op = if w.client_config.ca_bundle.is_some() { "replace" } else { "add" };
            ops.push(
                serde_json::json!({"op": op, "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": value}),
            );
        }
    }
    if ops.is_empty() {
        return Ok(false);
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops)).expect("valid JSON patch");
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .with_context(|| format!("writing the caBundle of MutatingWebhookConfiguration {name}"))?;
    tracing::info!(configuration = name, "webhook caBundle updated");
    Ok(true)
}

/// Every [`REFRESH`] until `stop`: [`ensure`], [`publish_ca_bundle`] when provisioning, and
/// a new server configuration in `tls` when the certificate changed. Failures are logged
/// and retried at the next round; the server keeps the last good certificate.
pub async fn keep_current(client: Client, src: CertSource, tls: TlsConfig, mut current: Pem, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REFRESH) => {}
        }
        match refresh(&client, &src, &tls, &current).await {
            Ok(pem) => current = pem,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "webhook certificate refresh failed; serving the last one")
            }
        }
    }
}

/// One round of [`keep_current`] (also the first load, with an empty `current`).
///
/// Errors: as [`ensure`], [`publish_ca_bundle`] and [`server_config`].
pub async fn refresh(client: &Client, src: &CertSource, tls: &TlsConfig, current: &Pem) -> anyhow::Result<Pem> {
    let pem = ensure(client, src, OffsetDateTime::now_utc()).await?;
    if let (Some(config), Some(ca)) = (&src.provision, &pem.ca) {
        publish_ca_bundle(client, config, ca).await?;
    }
    if &pem != current {
        *tls.write().expect("TLS config lock") = Arc::new(server_config(&pem.cert, &pem.key)?);
        tracing::info!(secret = %src.secret, "webhook serving certificate loaded");
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_cert_for_the_service_names() {
        let names = dns_names("omg-webhook", "gossip-system");
        assert_eq!(names[2], "omg-webhook.gossip-system.svc");
        let now = OffsetDateTime::now_utc();
        let c = generate(&names, now).unwrap();
        assert!(c.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(c.key_pem.contains("PRIVATE KEY"));
        assert!(server_config(&c.cert_pem, &c.key_pem).is_ok());
        assert!(!needs_renewal(c.not_after, &c.dns_names, &names, now));
        assert!(needs_renewal(c.not_after, &c.dns_names, &names, c.not_after - Duration::from_secs(24 * 3600)));
        assert!(needs_renewal(c.not_after, &c.dns_names, &dns_names("other", "gossip-system"), now));
    }

    #[test]
    fn mismatched_key_is_refused() {
        let names = dns_names("a", "b");
        let now = OffsetDateTime::now_utc();
        let (one, two) = (generate(&names, now).unwrap(), generate(&names, now).unwrap());
        let e = server_config(&one.cert_pem, &two.key_pem).unwrap_err();
        assert!(format!("{e:#}").contains("do not match"), "{e:#}");
    }
}

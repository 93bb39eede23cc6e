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

use std::time::Duration;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;

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

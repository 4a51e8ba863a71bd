//! A certificate authority made in the test, so TLS is real: the simulator serves a
//! certificate this CA signed, and the host trusts it only through `ca_bundle`.

use std::path::PathBuf;

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A test CA; its PEM certificate is written to [`TestCa::bundle`].
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    _dir: tempfile::TempDir,
    /// The CA certificate as a PEM file, for the `ca_bundle` setting.
    pub bundle: PathBuf,
}

/// A server certificate and its key, both PEM.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "usage-agent test CA");
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let dir = tempfile::tempdir()?;
        let bundle = dir.path().join("test-ca.pem");
        std::fs::write(&bundle, issuer.pem())?;
        Ok(Self { issuer, _dir: dir, bundle })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Result<ServerCert> {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*self.issuer)?;
        Ok(ServerCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The settings line (6-space indent) that makes the host trust this CA.
    pub fn setting(&self) -> String {
        format!("      ca_bundle: {:?}\n", self.bundle.display().to_string())
    }
}

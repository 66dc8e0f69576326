//! Certificates made by a test: a CA of its own and a server certificate it signs, for the
//! throwaway PostgreSQL and Redis servers that speak TLS.
//!
//! Made in process with rcgen (ECDSA P-256, signed with ring, which rustls already builds)
//! rather than with the `openssl` CLI: nothing outside the build is needed, and every name
//! and date is set in code. Each CA is new, so a second `TestCa` is a CA the server's
//! certificate does not chain to: a wrong CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The names every server certificate is made for: what the tests connect to.
pub const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// A certificate authority made for one test; its files are removed on drop.
pub struct TestCa {
    dir: PathBuf,
    ca_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate and its key, signed by a [`TestCa`], as PEM files in its directory.
#[derive(Clone, Debug)]
pub struct ServerCert {
    /// The certificate.
    pub cert_path: PathBuf,
    /// Its private key (PKCS#8).
    pub key_path: PathBuf,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The key, PEM.
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `ca.pem` in a fresh directory.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Tiercache test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate the CA's key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let dir = crate::fresh_dir("tls");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, cert.pem()).expect("write ca.pem");
        TestCa {
            dir,
            ca_path,
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate, PEM: what a client trusts.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The CA's certificate as PEM bytes.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca_path).expect("read ca.pem")
    }

    /// A server certificate for [`SERVER_NAMES`], signed by this CA, written to
    /// `server.pem` and `server.key` in the CA's directory.
    pub fn server_cert(&self) -> ServerCert {
        let mut params =
            CertificateParams::new(SERVER_NAMES.map(str::to_owned).to_vec()).expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, "tiercache test server");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("generate the server's key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the server certificate");
        let server = ServerCert {
            cert_path: self.dir.join("server.pem"),
            key_path: self.dir.join("server.key"),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&server.cert_path, &server.cert_pem).expect("write server.pem");
        std::fs::write(&server.key_path, &server.key_pem).expect("write server.key");
        server
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! Certificates made at test time (rcgen), never committed: a CA, and the certificates it
//! issues, written as PEM files into a directory of the test's own.
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tim::client::{ClientTls, Options};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pem {
    /// Client options that present this certificate and trust `ca`.
    pub fn client(&self, ca: &Ca) -> Options {
        let tls = ClientTls::from_files(Some(&ca.cert), Some(&self.cert), Some(&self.key));
        Options { tls: Some(tls.unwrap()), ..Options::default() }
    }

    /// Makes `c` serve TLS with this certificate.
    pub fn serve(&self, c: &mut tim::Config) {
        c.tls_cert = Some(self.cert.clone());
        c.tls_key = Some(self.key.clone());
    }
}

/// A certificate authority with a directory of its own, removed when dropped.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    /// The CA certificate (PEM).
    pub cert: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tim-tls-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, format!("tim test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert = dir.join("ca.pem");
        std::fs::write(&cert, issuer.pem()).unwrap();
        Ca { issuer, dir, cert }
    }

    /// A certificate for `localhost` and 127.0.0.1, usable by servers and clients alike,
    /// written as `<name>.pem` and `<name>.key`.
    pub fn issue(&self, name: &str) -> Pem {
        let pem = Pem {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        self.issue_to(name, &pem);
        pem
    }

    /// Writes a new certificate over `pem`'s files (a renewal or a rotation).
    pub fn issue_to(&self, name: &str, pem: &Pem) {
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        write(&pem.cert, &cert.pem());
        write(&pem.key, &key.serialize_pem());
    }

    /// Client options that trust this CA (and present no certificate).
    pub fn client(&self) -> Options {
        let tls = ClientTls::from_files(Some(&self.cert), None, None).unwrap();
        Options { tls: Some(tls), ..Options::default() }
    }
}

/// Replaces `path` whole, as deployment tools do: a new file renamed over the old one.
fn write(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

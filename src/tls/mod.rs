//! TLS with rustls (ring provider): PEM loading shared by the bridge (client side) and the
//! listeners (server side), [`ServerTls`], a server config that can be reloaded from its
//! files (SIGHUP) while connections already open keep the config they were accepted with, and
//! [`Stream`], a server-side connection that is plain TCP or TLS.

mod stream;

pub use stream::Stream;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn bad(path: &Path, e: &dyn std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

/// The PEM certificates of `path` (at least one).
pub fn load_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, &e))?;
    if certs.is_empty() {
        return Err(bad(path, &"no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The PEM private key of `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| bad(path, &e))
}

/// A root store of the CA certificates in `path`.
pub fn load_roots(path: &Path) -> io::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| bad(path, &e))?;
    }
    Ok(roots)
}

/// Where a server's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate signed by one (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl ServerFiles {
    /// Reads the files and builds a rustls server config.
    pub fn build(&self) -> io::Result<rustls::ServerConfig> {
        install_provider();
        let chain = load_certs(&self.cert)?;
        let key = load_key(&self.key)?;
        let builder = rustls::ServerConfig::builder();
        let builder = match &self.client_ca {
            Some(ca) => {
                let roots = Arc::new(load_roots(ca)?);
                let verifier = rustls::server::WebPkiClientVerifier::builder(roots)
                    .build()
                    .map_err(|e| bad(ca, &e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        builder
            .with_single_cert(chain, key)
            .map_err(|e| bad(&self.key, &e))
    }
}

/// A reloadable server config.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerFiles,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl ServerTls {
    /// Loads the files once (fails when they cannot be used); `alpn` lists the application
    /// protocols offered (`h2` for gRPC; none for MQTT).
    pub fn new(files: ServerFiles, alpn: &[&[u8]]) -> io::Result<Self> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(Self::build(&files, &alpn)?);
        Ok(Self {
            files,
            alpn,
            current: RwLock::new(config),
        })
    }

    fn build(files: &ServerFiles, alpn: &[Vec<u8>]) -> io::Result<rustls::ServerConfig> {
        let mut config = files.build()?;
        config.alpn_protocols = alpn.to_vec();
        Ok(config)
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again; on error the old config stays in use.
    pub fn reload(&self) -> io::Result<()> {
        let config = Arc::new(Self::build(&self.files, &self.alpn)?);
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }
}

/// The subject CN of the client certificate a TLS server connection verified.
pub fn peer_cn(conn: &rustls::ServerConnection) -> Option<Arc<str>> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| crate::auth::cert::subject_cn(leaf))
        .map(Arc::from)
}

/// Uses rustls with the ring provider for every TLS in the process (MQTT and gRPC listeners,
/// bridges, HTTPS to object stores); once per process, later calls do nothing.
pub fn install_provider() {
    // Fails only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

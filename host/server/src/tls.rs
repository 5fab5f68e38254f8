//! TLS on every connection between the parties (docs/tls.md), with rustls (TLS 1.3, ring):
//! callers → coordinator, coordinator → custodian, custodian → custodian and custodian →
//! coordinator.
//!
//! No public CA stands between the parties: each server's key is **pinned** in the cluster's
//! configs ([`Fingerprint`], the SHA-256 of its SubjectPublicKeyInfo) and checked by our own
//! verifiers, so a server whose key is not the one its config names is refused by every other
//! party, whatever certificate it shows. The link between servers is **mutual**: the
//! connecting server presents its own certificate, and a server refuses a client certificate
//! whose key its config does not pin. A client may also present none (a caller, an operator's
//! freeze, a health probe): what needs a party is authenticated again by its signatures (orders
//! by the coordinator's key, round messages by pairwise keys).
//!
//! The pins a process dials and admits are not fixed at its start: a membership rotation brings
//! in custodians with new URLs and new keys while every process runs, so the pins live in one
//! shared set ([`Parties`]) that the dialer and the listener read at each connection, and that
//! [`crate::Env::admit`] grows.
//!
//! A server's key is one file, `tls.key` (PKCS#8 PEM, 0600) in its data directory; its
//! certificate is self-signed from it at each start, since only the key is pinned. A
//! coordinator may present a chain its organization's CA issued instead (`tls_cert`,
//! `tls_key`), so callers can verify it the usual way; the custodians pin that chain's key.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::Uri;
use quorumvm_wire::fingerprint::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use zeroize::Zeroizing;

use crate::http::{Dial, Dialing, Stream, Tcp};
use crate::keys;

/// A server's TLS key, in its data directory.
pub const KEY_FILE: &str = "tls.key";

/// How long a TLS handshake may take, on either side; a connection that has not finished one
/// by then is closed (a client that opens connections and sends nothing holds no server task).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshaken connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 256;

/// TLS handshakes accepted by this process's listeners (a process runs one server).
static HANDSHAKES: AtomicU64 = AtomicU64::new(0);

/// How many TLS handshakes this process's listeners have accepted (`GET /metrics`).
pub fn handshakes() -> u64 {
    HANDSHAKES.load(Ordering::Relaxed)
}

/// Makes ring the process's rustls provider, for clients built without a configuration of
/// ours (reqwest's for plain HTTP on the loopback still builds a TLS stack).
pub fn install_default_provider() {
    // Already installed (by an earlier call) is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// A party's TLS identity: the certificate chain it presents, its key, and the key's pin.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Identity {
    /// Creates `tls.key` (ECDSA P-256) in `data_dir` if absent and returns its pin: what the
    /// cluster's configs list for this server.
    pub fn init(data_dir: &Path) -> anyhow::Result<Fingerprint> {
        keys::create_if_absent(&data_dir.join(KEY_FILE), || {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .expect("ring makes a P-256 key");
            Zeroizing::new(key.serialize_pem())
        })?;
        Ok(Identity::load(data_dir, "quorumvm")?.fingerprint)
    }

    /// The key in `data_dir` (never created here: a server that made up a key would not match
    /// its pin), with a certificate self-signed for `name`.
    pub fn load(data_dir: &Path, name: &str) -> anyhow::Result<Identity> {
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            anyhow::bail!(
                "{} does not exist: create the server's keys first (`quorumvm server-keys`, \
                 or `quorumvm dev --init-only` for a local cluster)",
                path.display()
            );
        }
        let pem = keys::read(&path)?;
        let key = rcgen::KeyPair::from_pem(&pem)
            .with_context(|| format!("{} is not a TLS key", path.display()))?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2125, 1, 1);
        let certificate = params.self_signed(&key)?;
        Ok(Identity {
            fingerprint: spki_pin(certificate.der())?,
            chain: vec![certificate.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }

    /// A chain (PEM, leaf first) and its key (PEM) from files, e.g. issued by a CA.
    pub fn from_files(chain: &Path, key: &Path) -> anyhow::Result<Identity> {
        let chain = CertificateDer::pem_file_iter(chain)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot read the certificates in {}", chain.display()))?;
        let leaf = chain.first().context("no certificate in tls_cert")?;
        let fingerprint = spki_pin(leaf).map_err(|e| anyhow::anyhow!("tls_cert: {e}"))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("cannot read the key in {}", key.display()))?;
        Ok(Identity {
            chain,
            key,
            fingerprint,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// How this party connects to a server whose key is `pin`, presenting its own certificate.
    pub fn client_config(&self, pin: Fingerprint) -> anyhow::Result<Arc<ClientConfig>> {
        Ok(Arc::new(pinned_builder(pin)?.with_client_auth_cert(
            self.chain.clone(),
            self.key.clone_key(),
        )?))
    }

    /// Another handle on the same key, for a [`Parties`] that outlives its caller's.
    fn duplicate(&self) -> Identity {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

/// How a caller (the CLI) trusts a server: by its key's pin, or by a CA's certificates.
pub enum Trust {
    Pinned(Fingerprint),
    Roots(Vec<CertificateDer<'static>>),
}

impl Trust {
    /// The certificates (PEM) of the CA that issued the server's chain.
    pub fn roots_from(path: &Path) -> anyhow::Result<Trust> {
        let roots = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot read the certificates in {}", path.display()))?;
        anyhow::ensure!(!roots.is_empty(), "no certificate in {}", path.display());
        Ok(Trust::Roots(roots))
    }

    /// A client configuration without a client certificate.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        match self {
            Trust::Pinned(pin) => Ok(pinned_builder(*pin)?.with_no_client_auth()),
            Trust::Roots(roots) => {
                let mut store = rustls::RootCertStore::empty();
                for root in roots {
                    store.add(root.clone())?;
                }
                Ok(ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])?
                    .with_root_certificates(store)
                    .with_no_client_auth())
            }
        }
    }
}

fn pinned_builder(
    pin: Fingerprint,
) -> anyhow::Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>> {
    let verifier = PinnedServer {
        pin,
        algorithms: algorithms(),
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

/// The pin of a certificate's key.
fn spki_pin(cert: &CertificateDer<'_>) -> Result<Fingerprint, rustls::Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    Ok(Fingerprint::of_spki(&parsed.subject_public_key_info()))
}

/// Refuses a certificate whose key is not among `pins`.
fn check_pin(cert: &CertificateDer<'_>, pins: &[Fingerprint]) -> Result<(), rustls::Error> {
    let pin = spki_pin(cert)?;
    if pins.contains(&pin) {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }
}

/// Accepts exactly one server key. Names and dates are not checked: the pin is the identity,
/// and a pinned key is replaced by changing the configs, not by expiry.
#[derive(Debug)]
struct PinnedServer {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_pin(end_entity, &[self.pin]).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Asks every client for a certificate and refuses one whose key is not pinned (among the
/// parties' client pins as they are at this handshake); a client may present none.
#[derive(Debug)]
struct PinnedClients {
    parties: Arc<Parties>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_pin(end_entity, &self.parties.read().clients)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The host and port a URL names, as the servers' client dials it ([`crate::http::destination`]).
pub fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    crate::http::destination(&uri).with_context(|| format!("`{url}` names no host"))
}

/// The parties a process talks to over TLS, as `identity`: the pin of each server it dials (by
/// the host and port of its URL) and the pins whose client certificates its listener admits.
///
/// One set, shared by the process's [`TlsDial`] and its listener's verifier, each reading it at
/// every connection: a membership rotation admits the joining custodians' keys
/// ([`Parties::admit`], through [`crate::Env::admit`]) while the process runs, without a
/// restart.
pub struct Parties {
    identity: Identity,
    known: RwLock<Known>,
}

/// What [`Parties`] guards.
#[derive(Default)]
struct Known {
    /// A connector per server, checking that server's pin and presenting our certificate.
    links: HashMap<(String, u16), TlsConnector>,
    /// The pins whose client certificates are admitted.
    clients: Vec<Fingerprint>,
}

impl Parties {
    /// `identity`'s parties: each `(url, pin)` is dialed, and its client certificates admitted.
    pub fn new<'a>(
        identity: &Identity,
        parties: impl IntoIterator<Item = (&'a str, Fingerprint)>,
    ) -> anyhow::Result<Parties> {
        let set = Parties {
            identity: identity.duplicate(),
            known: RwLock::default(),
        };
        for (url, pin) in parties {
            set.admit(url, pin)?;
        }
        Ok(set)
    }

    /// Pins `pin` for the server at `url`'s host and port (replacing the pin it had, if any)
    /// and admits `pin`'s client certificates, from the next connection on: how a rotation
    /// brings a joining custodian in without restarting anyone.
    pub fn admit(&self, url: &str, pin: Fingerprint) -> anyhow::Result<()> {
        let destination = host_port(url)?;
        let connector = TlsConnector::from(self.identity.client_config(pin)?);
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        known.links.insert(destination, connector);
        if !known.clients.contains(&pin) {
            known.clients.push(pin);
        }
        Ok(())
    }

    /// How this party serves: its certificate, and a client certificate, when one is
    /// presented, checked against these parties' pins as they are at its handshake.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<ServerConfig>> {
        let verifier = PinnedClients {
            parties: Arc::clone(self),
            algorithms: algorithms(),
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.identity.chain.clone(), self.identity.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The pins now, for one connection. Every write leaves the set whole, so a panic that
    /// poisoned the lock left nothing half-done.
    fn read(&self) -> RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Parties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let known = self.read();
        f.debug_struct("Parties")
            .field("servers", &known.links.keys().collect::<Vec<_>>())
            .field("clients", &known.clients)
            .finish()
    }
}

/// TLS connections to the servers of [`Parties`], each checked against its own pin; a
/// destination without a pin (yet) is refused before a byte is sent.
pub struct TlsDial {
    parties: Arc<Parties>,
}

impl TlsDial {
    /// Connections from `identity` to each `(url, pin)`, and no others.
    pub fn new<'a>(
        identity: &Identity,
        servers: impl IntoIterator<Item = (&'a str, Fingerprint)>,
    ) -> anyhow::Result<TlsDial> {
        Ok(TlsDial::to(Arc::new(Parties::new(identity, servers)?)))
    }

    /// Connections to `parties` as they are at each dial, so that a server admitted later is
    /// dialed too.
    pub fn to(parties: Arc<Parties>) -> TlsDial {
        TlsDial { parties }
    }
}

impl Dial for TlsDial {
    fn dial(&self, host: String, port: u16) -> Dialing {
        let connector = self
            .parties
            .read()
            .links
            .get(&(host.clone(), port))
            .cloned();
        Box::pin(async move {
            let connector = connector.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("no pinned TLS key for {host}:{port}"),
                )
            })?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tcp = Tcp.dial(host, port).await?;
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(Box::new(tls) as Box<dyn Stream>)
        })
    }
}

/// A real process of a TLS cluster: its environment, whose connections go to `parties` (URL
/// and pin), and its listener, which admits the client certificates of the same parties. Both
/// share one [`Parties`], so a party the environment admits later ([`crate::Env::admit`]) is
/// dialed and admitted by both from the next connection on.
pub fn serving(
    identity: &Identity,
    parties: &[(&str, Fingerprint)],
    listener: TcpListener,
) -> anyhow::Result<(crate::Env, TlsListener)> {
    let parties = Arc::new(Parties::new(identity, parties.iter().copied())?);
    let listener = TlsListener::new(listener, parties.server_config()?)?;
    Ok((crate::Env::system().with_tls(parties), listener))
}

/// Who is at the other end of a connection, as the listener saw it (axum's `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// Plain HTTP (an `insecure_loopback` cluster, a simulation): there is no certificate to
    /// check.
    Plain(SocketAddr),
    /// TLS; `party` is the pin of the client certificate it presented (one of the pins the
    /// listener admits), `None` if it presented none.
    Tls {
        addr: SocketAddr,
        party: Option<Fingerprint>,
    },
}

impl Peer {
    /// A TLS client that presented no certificate: a caller, an operator, a probe; not a party
    /// of the cluster.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Peer::Tls { party: None, .. })
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Peer {
        Peer::Plain(addr)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Plain(addr) | Peer::Tls { addr, .. } => write!(f, "{addr}"),
        }
    }
}

/// A listener whose connections say who is at the other end ([`Peer`], as axum's
/// `ConnectInfo`): a [`TlsListener`], or a plain one.
pub struct PeerListener<L>(pub L);

impl<L> axum::serve::Listener for PeerListener<L>
where
    L: axum::serve::Listener,
    L::Addr: Into<Peer>,
{
    type Io = L::Io;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Peer) {
        let (io, addr) = self.0.accept().await;
        (io, addr.into())
    }

    fn local_addr(&self) -> io::Result<Peer> {
        self.0.local_addr().map(Into::into)
    }
}

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PeerListener<L>>>
    for Peer
where
    PeerListener<L>: axum::serve::Listener<Addr = Peer>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, PeerListener<L>>) -> Peer {
        *stream.remote_addr()
    }
}

/// A listener that hands the server only connections whose TLS handshake succeeded. Each
/// handshake runs in its own task (with [`HANDSHAKE_TIMEOUT`]), so a slow or silent client
/// delays nobody else's.
pub struct TlsListener {
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, Peer)>,
    local: Peer,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                // The server dropped its listener: stop accepting (and free the port).
                let accepted = tokio::select! {
                    () = sender.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {e}");
                }
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            HANDSHAKES.fetch_add(1, Ordering::Relaxed);
                            // The verifier admitted only a pinned key, if any.
                            let party = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|leaf| spki_pin(leaf).ok());
                            let peer = Peer::Tls { addr: peer, party };
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, "TLS handshake refused: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        let local = Peer::Tls {
            addr: local,
            party: None,
        };
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task never ends while this receiver lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
        PublicKeyData as _,
    };

    /// A CA (its certificate, and an issuer for leaves).
    fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let certificate = params.self_signed(&key).unwrap();
        (certificate, Issuer::new(params, key))
    }

    /// Serves `identity` on the loopback, admitting no client certificate; returns its address.
    async fn serve(identity: &Identity) -> SocketAddr {
        let parties = Arc::new(Parties::new(identity, []).unwrap());
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listener = TlsListener::new(tcp, parties.server_config().unwrap()).unwrap();
        let addr = match axum::serve::Listener::local_addr(&listener).unwrap() {
            Peer::Tls { addr, .. } | Peer::Plain(addr) => addr,
        };
        tokio::spawn(async move {
            loop {
                let (stream, _) = axum::serve::Listener::accept(&mut listener).await;
                drop(stream);
            }
        });
        addr
    }

    async fn handshake(config: ClientConfig, addr: SocketAddr) -> io::Result<()> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        Ok(())
    }

    /// A coordinator presenting its organization's chain: callers verify it with the CA
    /// (`--ca`), a CA they do not hold is refused, and the custodians' pin is the leaf's key.
    #[tokio::test]
    async fn a_chain_from_a_ca_serves_callers_and_pins_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (org_ca, org) = ca("organization CA");
        let (other_ca, _) = ca("someone else's CA");
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &org)
            .unwrap();
        let (chain, key, ca_file, other_file) = (
            dir.path().join("chain.pem"),
            dir.path().join("key.pem"),
            dir.path().join("ca.pem"),
            dir.path().join("other.pem"),
        );
        std::fs::write(&chain, leaf.pem()).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
        std::fs::write(&ca_file, org_ca.pem()).unwrap();
        std::fs::write(&other_file, other_ca.pem()).unwrap();

        let identity = Identity::from_files(&chain, &key).unwrap();
        assert_eq!(
            identity.fingerprint(),
            Fingerprint::of_spki(&leaf_key.subject_public_key_info())
        );
        let addr = serve(&identity).await;
        let with = |trust: Trust| trust.client_config().unwrap();
        handshake(with(Trust::roots_from(&ca_file).unwrap()), addr)
            .await
            .expect("the organization's CA verifies the chain");
        handshake(with(Trust::Pinned(identity.fingerprint())), addr)
            .await
            .expect("the leaf's key pin admits it");
        assert!(
            handshake(with(Trust::roots_from(&other_file).unwrap()), addr)
                .await
                .is_err()
        );
        let stranger = Fingerprint::of_spki(b"another key");
        assert!(
            handshake(with(Trust::Pinned(stranger)), addr)
                .await
                .is_err()
        );
    }

    /// A process made by `serving` with `parties`, answering `GET /` over HTTP; its env and URL.
    async fn process(identity: &Identity, parties: &[(&str, Fingerprint)]) -> (crate::Env, String) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", tcp.local_addr().unwrap());
        let (env, listener) = serving(identity, parties, tcp).unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (env, url)
    }

    /// A membership rotation's joining custodian: a running process neither dials it nor
    /// admits its client certificate until `Env::admit` pins its key, and from then on does
    /// both, without a restart.
    #[tokio::test]
    async fn admit_pins_a_joining_party_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let identity = |name: &str| {
            let dir = dir.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            Identity::init(&dir).unwrap();
            Identity::load(&dir, name).unwrap()
        };
        let (running, joining) = (identity("running"), identity("joining"));
        let (env, url) = process(&running, &[]).await;
        let (joiner, joining_url) =
            process(&joining, &[(url.as_str(), running.fingerprint())]).await;
        let get = |env: &crate::Env, url: &str| env.http().get(format!("{url}/")).send();

        let refused = get(&env, &joining_url).await.unwrap_err();
        assert!(
            refused.to_string().contains("no pinned TLS key"),
            "a server not yet admitted is not dialed: {refused}"
        );
        assert!(
            get(&joiner, &url).await.is_err(),
            "a client certificate not yet admitted is refused"
        );
        let anonymous = Trust::Pinned(running.fingerprint())
            .client_config()
            .unwrap();
        handshake(
            anonymous,
            url.trim_start_matches("https://").parse().unwrap(),
        )
        .await
        .expect("a client may present no certificate");

        env.admit(&joining_url, joining.fingerprint()).unwrap();
        let reply = get(&env, &joining_url)
            .await
            .expect("an admitted server is dialed");
        assert_eq!(reply.status, 200);
        let reply = get(&joiner, &url)
            .await
            .expect("an admitted client is served");
        assert_eq!(reply.status, 200);

        crate::Env::system()
            .admit(&joining_url, joining.fingerprint())
            .expect("an env without TLS has nothing to pin");
    }
}

//! The simulation's network as the servers see it: turmoil's sockets behind the same
//! interfaces as the real ones (axum's `Listener`, the servers' `Dial`), and turmoil's clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quorumvm_server::Env;
use quorumvm_server::http::{CONNECT_TIMEOUT, Dial, Dialing, Stream};

/// The port every simulated server listens on (each host has an address of its own).
pub const PORT: u16 = 7000;

/// A turmoil listener for `axum::serve`.
pub struct Listener(pub turmoil::net::TcpListener);

impl Listener {
    pub async fn bind() -> std::io::Result<Listener> {
        Ok(Listener(
            turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?,
        ))
    }
}

impl axum::serve::Listener for Listener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Opens turmoil connections, by host name.
struct SimDial;

impl Dial for SimDial {
    fn dial(&self, host: String, port: u16) -> Dialing {
        Box::pin(async move {
            let connect = turmoil::net::TcpStream::connect((host.as_str(), port));
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    }
}

/// Milliseconds since the Unix epoch on the simulation's clock.
pub fn now_ms() -> u64 {
    turmoil::since_epoch()
        .expect("called inside a simulation")
        .as_millis() as u64
}

/// A simulated host's environment: turmoil's clock and sockets, everything inline.
pub fn env() -> Env {
    Env::simulated(Arc::new(now_ms), Arc::new(SimDial))
}

/// The URL of a simulated server.
pub fn url(host: &str) -> String {
    format!("http://{host}:{PORT}")
}

//! The servers' HTTP client: hyper's pooled HTTP/1 client over connections a [`Dial`] opens.
//!
//! The coordinator calls the custodians (health, orders, sessions), a custodian calls its peers
//! (round messages) and the coordinator (activation fetches). Each keeps one [`HttpClient`], so
//! connections are pooled and reused. The connections come from the server's [`Env`]: TCP in a
//! real process, simulated sockets in the deterministic simulation (which is why this is not
//! reqwest, whose connector cannot be replaced).
//!
//! [`Env`]: crate::Env

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::header::HeaderName;
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

/// How long opening a connection may take: a custodian that does not accept within this is
/// treated as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A body larger than this is refused unless a call sets its own limit.
const DEFAULT_LIMIT: usize = 64 << 20;

/// Idle pooled connections per peer: enough for every concurrent session of a busy server.
const IDLE_PER_HOST: usize = 64;

/// A byte stream to a server, as [`Dial`] opens it.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// The future of [`Dial::dial`].
pub type Dialing = Pin<Box<dyn Future<Output = io::Result<Box<dyn Stream>>> + Send>>;

/// Opens connections: TCP in a real process ([`Tcp`]), simulated sockets in a simulation.
pub trait Dial: Send + Sync + 'static {
    /// A connection to `host:port`, or an error within [`CONNECT_TIMEOUT`].
    fn dial(&self, host: String, port: u16) -> Dialing;
}

/// TCP connections with `TCP_NODELAY` (round messages are small and latency-bound).
pub struct Tcp;

impl Dial for Tcp {
    fn dial(&self, host: String, port: u16) -> Dialing {
        Box::pin(async move {
            let connect = tokio::net::TcpStream::connect((host.as_str(), port));
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    }
}

/// Why a call got no answer (an answer with an error status is an [`Reply`], not this).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad request: {0}")]
    Request(String),
}

/// An answer: its status and its whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }
}

/// A pooled HTTP/1 client; clones share the pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, Full<Bytes>>,
}

impl HttpClient {
    pub fn new(dial: Arc<dyn Dial>) -> HttpClient {
        let inner = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .build(Connector(dial));
        HttpClient { inner }
    }

    pub fn get(&self, url: impl Into<String>) -> Call {
        Call::new(self.clone(), Method::GET, url.into())
    }

    pub fn post(&self, url: impl Into<String>) -> Call {
        Call::new(self.clone(), Method::POST, url.into())
    }
}

/// One request being built, as reqwest's builder reads: headers, body, timeout, then
/// [`Call::send`].
pub struct Call {
    client: HttpClient,
    method: Method,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    timeout: Duration,
    limit: usize,
}

impl Call {
    fn new(client: HttpClient, method: Method, url: String) -> Call {
        Call {
            client,
            method,
            url,
            headers: Vec::new(),
            body: Bytes::new(),
            timeout: Duration::from_secs(30),
            limit: DEFAULT_LIMIT,
        }
    }

    /// `name` is a lowercase header name.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Call {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Call {
        self.body = body.into();
        self
    }

    pub fn json<T: serde::Serialize + ?Sized>(self, body: &T) -> Call {
        let bytes = serde_json::to_vec(body).expect("a wire type serializes");
        self.header("content-type", "application/json").body(bytes)
    }

    /// The whole call (connecting, sending, reading the body) must finish within `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Call {
        self.timeout = timeout;
        self
    }

    /// Refuses an answer whose body is larger than `limit` bytes.
    pub fn limit(mut self, limit: usize) -> Call {
        self.limit = limit;
        self
    }

    pub async fn send(self) -> Result<Reply, HttpError> {
        let mut request = Request::builder().method(self.method).uri(&self.url);
        for (name, value) in self.headers {
            let name = HeaderName::from_static(name);
            let value =
                HeaderValue::try_from(value).map_err(|e| HttpError::Request(e.to_string()))?;
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(self.body))
            .map_err(|e| HttpError::Request(e.to_string()))?;
        let (client, limit) = (self.client, self.limit);
        let call = async move {
            let response = client
                .inner
                .request(request)
                .await
                .map_err(|e| HttpError::Unreachable(describe(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge(limit)
                    } else {
                        HttpError::Unreachable(describe(e.as_ref()))
                    }
                })?
                .to_bytes();
            Ok(Reply { status, body })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| HttpError::TimedOut(self.timeout))?
    }
}

/// An error with its causes, which hyper keeps in its source chain.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The host (without an IPv6 address's brackets) and port (the scheme's default if none) a
/// URL names: what the [`Dial`] is asked to open, and so what a pinned TLS dial is keyed by.
pub fn destination(uri: &Uri) -> Option<(String, u16)> {
    let host = uri
        .host()?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let default = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    Some((host, uri.port_u16().unwrap_or(default)))
}

/// hyper's connector: the URL's host and port, opened by the [`Dial`].
#[derive(Clone)]
struct Connector(Arc<dyn Dial>);

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dial = Arc::clone(&self.0);
        Box::pin(async move {
            let (host, port) = destination(&uri)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in the URL"))?;
            let stream = dial.dial(host, port).await?;
            Ok(Conn(TokioIo::new(stream)))
        })
    }
}

/// A dialed stream as hyper reads and writes it.
struct Conn(TokioIo<Box<dyn Stream>>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

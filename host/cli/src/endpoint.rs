//! Where a server is and how the CLI knows it is that server: TLS to the key the cluster's
//! configs pin for it (`--pin`), TLS to a chain an organization's CA issued (`--ca`), or
//! plain HTTP to a server on this machine's loopback (a cluster made with
//! `--insecure-loopback`). Nothing else: an API key, an approval or a caller's input never
//! crosses a network in clear, nor goes to a server nobody checked.

use std::path::PathBuf;

use quorumvm_server::tls;
use quorumvm_wire::config::{Fingerprint, is_loopback_url};

use crate::exit::{Failure, Result};

/// A server the CLI calls.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub trust: Trust,
}

/// How the CLI checks the server at an [`Endpoint`].
#[derive(Debug, Clone)]
pub enum Trust {
    /// Plain HTTP, to a loopback address only.
    Loopback,
    /// TLS, to the server holding the key with this pin.
    Pin(Fingerprint),
    /// TLS, to a server whose chain the CA certificates in this file issued.
    Ca(PathBuf),
}

impl Endpoint {
    /// `url`, with `pin` (absent: only plain HTTP on the loopback).
    pub fn pinned(url: impl Into<String>, pin: Option<Fingerprint>) -> Endpoint {
        Endpoint {
            url: url.into().trim_end_matches('/').to_string(),
            trust: pin.map_or(Trust::Loopback, Trust::Pin),
        }
    }

    /// The rustls configuration for this endpoint, or `None` for plain HTTP; refuses a URL
    /// its trust does not fit.
    pub fn tls(&self) -> Result<Option<rustls::ClientConfig>> {
        let url = &self.url;
        let trust = match (url.split_once("://").map(|(s, _)| s), &self.trust) {
            (Some("http"), Trust::Loopback) if is_loopback_url(url) => return Ok(None),
            (Some("http"), Trust::Loopback) => {
                return Err(Failure::data(format!(
                    "{url}: plain HTTP goes only to this machine's loopback (a cluster made with \
                     --insecure-loopback); reach this server with https:// and --pin or --ca"
                )));
            }
            (Some("http"), _) => {
                return Err(Failure::data(format!(
                    "{url}: --pin and --ca are for https:// URLs"
                )));
            }
            (Some("https"), Trust::Loopback) => {
                return Err(Failure::data(format!(
                    "{url}: give the server's TLS key pin (--pin or QUORUMVM_PIN: its \
                     `tls_fingerprint` in the cluster's configs, as `quorumvm server-keys` \
                     printed it) or its CA's certificates (--ca or QUORUMVM_CA)"
                )));
            }
            (Some("https"), Trust::Pin(pin)) => tls::Trust::Pinned(*pin),
            (Some("https"), Trust::Ca(path)) => {
                tls::Trust::roots_from(path).map_err(|e| Failure::data(format!("--ca: {e:#}")))?
            }
            _ => return Err(Failure::data(format!("`{url}` is not an http(s) URL"))),
        };
        trust
            .client_config()
            .map(Some)
            .map_err(|e| Failure::data(format!("TLS: {e:#}")))
    }
}

/// How a command checks the server it calls: `--pin` or `--ca`; with neither, only
/// `http://` to a loopback address is reached.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TrustArgs {
    /// The pin of the server's TLS key (64 hex digits): its `tls_fingerprint` in the cluster's
    /// configs (`quorumvm server-keys` prints it).
    #[arg(long, env = "QUORUMVM_PIN", conflicts_with = "ca")]
    pub pin: Option<Fingerprint>,
    /// A file of CA certificates (PEM) that issued the server's certificate, for a coordinator
    /// that presents its organization's chain to callers.
    #[arg(long, env = "QUORUMVM_CA")]
    pub ca: Option<PathBuf>,
}

impl TrustArgs {
    pub fn at(&self, url: &str) -> Endpoint {
        let trust = match (&self.pin, &self.ca) {
            (Some(pin), _) => Trust::Pin(*pin),
            (None, Some(ca)) => Trust::Ca(ca.clone()),
            (None, None) => Trust::Loopback,
        };
        Endpoint {
            url: url.trim_end_matches('/').to_string(),
            trust,
        }
    }
}

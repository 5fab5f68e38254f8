//! What a server takes from the world outside its own code: the wall clock, the connections it
//! opens, where its blocking work runs and how its ledger commits.
//!
//! A real process uses [`Env::system`]. The deterministic simulation (`tests/simulation`) runs
//! coordinator and custodians as hosts of one process on one thread, with simulated time and
//! sockets; it gives each server an [`Env::simulated`], under which nothing runs on another
//! thread: blocking work and ledger commits run inline, where the simulation's scheduler sees
//! them, so that one seed replays one schedule.

use std::sync::Arc;

use quorumvm_ledger::{Ledger, Writer};
use quorumvm_wire::fingerprint::Fingerprint;

use crate::http::{Dial, HttpClient, Tcp};
use crate::tls::{Parties, TlsDial};

/// Milliseconds since the Unix epoch, the clock every signed expiry is measured on.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A bug the simulation plants on purpose, to show that one of its invariants catches it. Only
/// a build with the `planted-bugs` feature can plant one ([`Env::plant`]); everywhere else
/// [`Env::planted`] is `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The coordinator does not persist how far it handed out kit ids, so a restarted
    /// coordinator hands the same ids out again.
    KitsNotReserved,
    /// A custodian answers a session before its admission (the kit taken, the charge) has
    /// committed: a crash in between loses the charge of an answered evaluation.
    AnswerBeforeCommit,
    /// The coordinator's retry keeps the output shares of the failed attempt, so shares of two
    /// different sharings may be combined.
    RetryKeepsAnswers,
    /// The coordinator charges a request without checking its budget.
    BudgetUnchecked,
    /// The coordinator never checks a custodian again once it marked it dead.
    DeadStaysDead,
    /// A custodian charges every attempt of a request, not only the first (the double charge
    /// of a retried request that custodians had before they kept a record of requests).
    ChargeEveryAttempt,
    /// The coordinator sends the commit of a refresh of the shares once: a custodian that
    /// missed it (down, cut off) is never sent it again and stays at the old epoch.
    CommitOnce,
}

/// A deviation from the protocol a custodian makes on purpose: the attacker's custodian of the
/// security tests, which show that whatever k − 1 custodians do, an answer is right or an
/// error. Like a [`Bug`], only a build with the `planted-bugs` feature can tell one
/// ([`Env::lies`]); there a real process takes it from `QUORUMVM_LIE` (the name in kebab case,
/// e.g. `QUORUMVM_LIE=output-share`), so the tests can run a lying custodian as a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Adds one to its first output share.
    OutputShare,
    /// Adds one to the first value it opens in an evaluation's first layer, to every peer.
    Opening,
    /// Adds one to the first value of its preprocessing reshare (layer 2), to every peer.
    Reshare,
    /// Adds one to its share of the first triple's `c` of every kit it takes.
    TripleC,
    /// Does not send its first layer's message.
    Withhold,
    /// Sends, in each layer, what it sent in the same layer of its previous session.
    Replay,
    /// In a refresh of the shares, deals a sharing of one, not of zero, for the first secret;
    /// in a rotation, re-deals its share plus one: either would change the secret.
    Refresh,
}

impl Lie {
    pub const ALL: [Lie; 7] = [
        Lie::OutputShare,
        Lie::Opening,
        Lie::Reshare,
        Lie::TripleC,
        Lie::Withhold,
        Lie::Replay,
        Lie::Refresh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lie::OutputShare => "output-share",
            Lie::Opening => "opening",
            Lie::Reshare => "reshare",
            Lie::TripleC => "triple-c",
            Lie::Withhold => "withhold",
            Lie::Replay => "replay",
            Lie::Refresh => "refresh",
        }
    }
}

/// See the module's documentation.
#[derive(Clone)]
pub struct Env {
    clock: Clock,
    dial: Arc<dyn Dial>,
    /// The TLS parties `dial` connects to and the listener admits, in a process of a TLS
    /// cluster ([`Env::with_tls`]): kept here so that [`Env::admit`] can grow them.
    tls: Option<Arc<Parties>>,
    /// Blocking work and ledger commits run in the calling task (the simulation) rather than
    /// on other threads.
    inline: bool,
    #[cfg(feature = "planted-bugs")]
    planted: Option<Bug>,
    #[cfg(feature = "planted-bugs")]
    lie: Option<Lie>,
    /// [`Lie::Replay`]'s memory: the last message sent in each layer.
    #[cfg(feature = "planted-bugs")]
    sent: Arc<std::sync::Mutex<std::collections::HashMap<u32, Vec<u8>>>>,
}

impl Env {
    /// A real process: the system clock, TCP, tokio's blocking pool, a writer thread.
    pub fn system() -> Env {
        Env {
            clock: Arc::new(quorumvm_wire::now_ms),
            dial: Arc::new(Tcp),
            tls: None,
            inline: false,
            #[cfg(feature = "planted-bugs")]
            planted: None,
            #[cfg(feature = "planted-bugs")]
            lie: std::env::var("QUORUMVM_LIE")
                .ok()
                .and_then(|name| Lie::ALL.into_iter().find(|l| l.name() == name)),
            #[cfg(feature = "planted-bugs")]
            sent: Default::default(),
        }
    }

    /// This environment, its connections opened by `dial` (TLS, [`crate::tls::TlsDial`]).
    pub fn with_dial(mut self, dial: Arc<dyn Dial>) -> Env {
        self.dial = dial;
        self
    }

    /// This environment, its connections opened over TLS to `parties`, which its listener
    /// shares ([`crate::tls::serving`]) and [`Env::admit`] grows.
    pub fn with_tls(mut self, parties: Arc<Parties>) -> Env {
        self.dial = Arc::new(TlsDial::to(Arc::clone(&parties)));
        self.tls = Some(parties);
        self
    }

    /// Pins `pin` for the server at `url` (replacing the pin its host and port had) and admits
    /// `pin`'s client certificates on the listener, from the next connection on, without a
    /// restart: how a membership rotation lets in the joining custodians, whose URLs and keys
    /// the processes did not know at their start. In an environment without TLS (plain HTTP, a
    /// simulation) there is nothing to pin, and this does nothing.
    pub fn admit(&self, url: &str, pin: Fingerprint) -> anyhow::Result<()> {
        match &self.tls {
            Some(parties) => parties.admit(url, pin),
            None => Ok(()),
        }
    }

    /// A host of a simulation: `clock` and `dial` are the simulation's, and nothing runs on
    /// another thread.
    pub fn simulated(clock: Clock, dial: Arc<dyn Dial>) -> Env {
        Env {
            clock,
            dial,
            tls: None,
            inline: true,
            #[cfg(feature = "planted-bugs")]
            planted: None,
            #[cfg(feature = "planted-bugs")]
            lie: None,
            #[cfg(feature = "planted-bugs")]
            sent: Default::default(),
        }
    }

    /// This environment with `bug` planted.
    #[cfg(feature = "planted-bugs")]
    pub fn plant(mut self, bug: Bug) -> Env {
        self.planted = Some(bug);
        self
    }

    /// Whether `bug` is planted here (never, in a build without the `planted-bugs` feature).
    pub fn planted(&self, bug: Bug) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted == Some(bug)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }

    /// Whether this custodian tells `lie` (never, in a build without the `planted-bugs`
    /// feature).
    pub fn lies(&self, lie: Lie) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.lie == Some(lie)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = lie;
            false
        }
    }

    /// [`Lie::Replay`]: the message sent in `layer` of the previous session in place of
    /// `message` (the first session sends its own), remembering `message` for the next.
    pub fn replay(&self, layer: u32, message: Vec<u8>) -> Vec<u8> {
        #[cfg(feature = "planted-bugs")]
        {
            let mut sent = self.sent.lock().expect("replay memory");
            sent.insert(layer, message.clone()).unwrap_or(message)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = layer;
            message
        }
    }

    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// A pooled HTTP client whose connections this environment opens.
    pub fn http(&self) -> HttpClient {
        HttpClient::new(Arc::clone(&self.dial))
    }

    /// Runs CPU-bound or blocking `work` (a plugin call, compiling a component, a blocking read)
    /// off the async workers: on tokio's blocking pool, or inline in a simulation.
    ///
    /// `spawn_blocking` rather than `block_in_place`: a large circuit's layer or a batch of kits
    /// takes milliseconds to seconds, during which an async worker must keep answering round
    /// messages and health checks, and `block_in_place` would also tie the server to a
    /// multi-threaded runtime.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, TaskFailed> {
        if self.inline {
            return Ok(work());
        }
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| TaskFailed(e.to_string()))
    }

    /// The group-commit writer of `ledger`: a thread of its own, or inline in a simulation.
    pub fn writer(&self, ledger: Ledger, name: &str) -> Writer {
        if self.inline {
            Writer::inline(ledger)
        } else {
            Writer::spawn(ledger, name)
        }
    }
}

/// Blocking work panicked or was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TaskFailed(pub String);

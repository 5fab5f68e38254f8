//! One seeded schedule: the faults it injects, the clients' requests, and the run of the
//! simulation that plays them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use quorumvm_package::Domain;
use quorumvm_server::Bug;
use quorumvm_server::http::HttpClient;
use quorumvm_wire::request::{CallerRequest, Decimal};
use quorumvm_wire::signed::Signed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::net;
use crate::world::{self, World};

pub const SERVERS: [&str; 4] = ["coordinator", "custodian-1", "custodian-2", "custodian-3"];

/// Simulated time advances by this much per step of the simulation.
const TICK_MS: u64 = 5;

/// Faults start within this window of simulated time.
const FAULT_WINDOW_MS: u64 = 2_000;
/// Once every fault is over, the cluster must answer a fresh request within this.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(20);

/// What a schedule does to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The host's process dies (its memory lost, its committed database kept) and starts
    /// again `down_ms` later.
    Crash { host: usize, down_ms: u64 },
    /// Nothing passes between the two hosts for a while.
    Partition { a: usize, b: usize, ms: u64 },
    /// Every message to or from the host takes this long, for a while.
    Slow {
        host: usize,
        latency_ms: u64,
        ms: u64,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::Crash { host, down_ms } => write!(f, "crash {} for {down_ms} ms", SERVERS[host]),
            Fault::Partition { a, b, ms } => {
                write!(f, "partition {}|{} for {ms} ms", SERVERS[a], SERVERS[b])
            }
            Fault::Slow {
                host,
                latency_ms,
                ms,
            } => write!(f, "slow {} ({latency_ms} ms) for {ms} ms", SERVERS[host]),
        }
    }
}

/// A request a client sends: its input, and how it behaves around it.
#[derive(Debug, Clone)]
pub struct Send {
    pub after_ms: u64,
    pub x: i64,
    /// Send the same signed request twice at once.
    pub concurrent_duplicate: bool,
    /// After a failure, send the same signed request again (a client's retry).
    pub retry: bool,
}

/// Everything a seed decides.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    /// (start, fault), by start.
    pub faults: Vec<(u64, Fault)>,
    /// Each loading caller's requests.
    pub sends: BTreeMap<&'static str, Vec<Send>>,
    /// When the operator asks for a refresh of the shares (`quorumvm reshare`), in order.
    pub reshares: Vec<u64>,
    /// When the operators of custodians 1 and 2 approve, one after the other, removing
    /// custodian 2 ([`REMOVED`]; the cluster becomes 1-of-2, the only smaller one).
    pub rotation: Option<u64>,
    /// When the last fault is over.
    pub calm_ms: u64,
}

impl Plan {
    pub fn new(seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut faults = Vec::new();
        for _ in 0..rng.gen_range(0..=4) {
            let at = rng.gen_range(0..FAULT_WINDOW_MS);
            let fault = match rng.gen_range(0..3) {
                0 => Fault::Crash {
                    host: rng.gen_range(0..SERVERS.len()),
                    down_ms: rng.gen_range(50..1_000),
                },
                1 => {
                    let a = rng.gen_range(0..SERVERS.len());
                    let b = (a + rng.gen_range(1..SERVERS.len())) % SERVERS.len();
                    Fault::Partition {
                        a,
                        b,
                        ms: rng.gen_range(50..1_000),
                    }
                }
                _ => Fault::Slow {
                    host: rng.gen_range(0..SERVERS.len()),
                    latency_ms: rng.gen_range(20..800),
                    ms: rng.gen_range(100..1_500),
                },
            };
            faults.push((at, fault));
        }
        faults.sort_by_key(|(at, _)| *at);
        let calm_ms = faults
            .iter()
            .map(|(at, f)| {
                at + match *f {
                    Fault::Crash { down_ms, .. } => down_ms,
                    Fault::Partition { ms, .. } | Fault::Slow { ms, .. } => ms,
                }
            })
            .max()
            .unwrap_or(0);
        let sends = world::CALLERS[..2]
            .iter()
            .map(|&caller| {
                let sends = (0..rng.gen_range(2..=8))
                    .map(|_| Send {
                        after_ms: rng.gen_range(0..400),
                        x: rng.gen_range(-100..=100),
                        concurrent_duplicate: rng.gen_bool(0.15),
                        retry: rng.gen_bool(0.5),
                    })
                    .collect();
                (caller, sends)
            })
            .collect();
        // Drawn last, so that a seed's faults and requests are those it had before refreshes
        // were part of the schedules.
        let mut reshares: Vec<u64> = (0..rng.gen_range(0..=2))
            .map(|_| rng.gen_range(0..FAULT_WINDOW_MS))
            .collect();
        reshares.sort_unstable();
        Plan {
            seed,
            faults,
            sends,
            reshares,
            rotation: None,
            calm_ms,
        }
    }

    /// The faults and refreshes, for a report.
    pub fn describe(&self) -> String {
        let mut events: Vec<String> = self
            .faults
            .iter()
            .map(|(at, f)| format!("{f} at {at} ms"))
            .collect();
        events.extend(self.reshares.iter().map(|at| format!("reshare at {at} ms")));
        if events.is_empty() {
            return "no faults".into();
        }
        events.join(", ")
    }
}

/// What a client saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub caller: &'static str,
    pub request_id: String,
    pub x: i64,
    /// The HTTP status, or `None` when no answer came.
    pub status: Option<u16>,
    pub body: serde_json::Value,
}

/// An answer: its status (`None`: none came) and body.
pub type Answer = (Option<u16>, serde_json::Value);

/// What a run left for the invariants to check.
pub struct Outcome {
    pub seen: Vec<Seen>,
    /// The operator's refresh requests' answers.
    pub reshares: Vec<Answer>,
    /// The two approvals' answers of the rotation, if the plan has one.
    pub rotation: Vec<Answer>,
    /// When the liveness probe got its answer, after the last fault (`None`: never).
    pub served_again_after: Option<Duration>,
    /// A host's software that failed (it could not start again, say).
    pub host_failure: Option<String>,
}

/// Runs `plan` on a fresh copy of the template, with `bug` planted in every server.
pub fn run(plan: &Plan, bug: Option<Bug>, world: &World) -> Outcome {
    let template = world::template();
    let mut sim = turmoil::Builder::new()
        .rng_seed(plan.seed)
        .enable_random_order()
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_795_000_000))
        .simulation_duration(Duration::from_secs(120))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .tick_duration(Duration::from_millis(TICK_MS))
        .build();
    let env = move || {
        let env = net::env();
        match bug {
            Some(bug) => env.plant(bug),
            None => env,
        }
    };
    let config = world.coordinator.clone();
    sim.host("coordinator", move || {
        let (env, config) = (env(), config.clone());
        async move {
            let listener = net::Listener::bind().await?;
            quorumvm_coordinator::run(env, config, listener)
                .await
                .map_err(|e| format!("{e:#}").into())
        }
    });
    for config in &world.custodians {
        let config = config.clone();
        // The custodian a rotation removes refuses to start once it committed: its host is
        // done then, not failed.
        let leaves = plan.rotation.is_some() && config.index == REMOVED;
        sim.host(format!("custodian-{}", config.index), move || {
            let (env, config) = (env(), config.clone());
            async move {
                let listener = net::Listener::bind().await?;
                match quorumvm_custodian::run(env, config, listener).await {
                    Err(e) if leaves && format!("{e:#}").contains("left the cluster") => Ok(()),
                    other => other.map_err(|e| format!("{e:#}").into()),
                }
            }
        });
    }

    let seen: Rc<RefCell<Vec<Seen>>> = Rc::default();
    for (&caller, sends) in &plan.sends {
        let client = Client::new(caller, plan.seed, &template.package_id);
        let (seen, sends) = (Rc::clone(&seen), sends.clone());
        sim.client(caller, async move {
            for send in sends {
                tokio::time::sleep(Duration::from_millis(send.after_ms)).await;
                let (request, id) = client.request(send.x);
                if send.concurrent_duplicate {
                    let (a, b) = tokio::join!(client.send(&request), client.send(&request));
                    seen.borrow_mut()
                        .extend([a, b].map(|r| client.seen(&id, send.x, r)));
                    continue;
                }
                let answer = client.send(&request).await;
                let failed = !matches!(answer, Ok((200, _)));
                seen.borrow_mut().push(client.seen(&id, send.x, answer));
                if failed && send.retry {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let again = client.send(&request).await;
                    seen.borrow_mut().push(client.seen(&id, send.x, again));
                }
            }
            Ok(())
        });
    }
    let served_again: Rc<RefCell<Option<Duration>>> = Rc::default();
    let probe = Client::new(world::CALLERS[2], plan.seed, &template.package_id);
    let (calm, answered) = (
        Duration::from_millis(plan.calm_ms),
        Rc::clone(&served_again),
    );
    let probe_seen = Rc::clone(&seen);
    sim.client(world::CALLERS[2], async move {
        tokio::time::sleep(calm).await;
        let start = tokio::time::Instant::now();
        while start.elapsed() < LIVENESS_BOUND {
            let x = 1;
            let (request, id) = probe.request(x);
            let answer = probe.send(&request).await;
            let ok = matches!(answer, Ok((200, _)));
            probe_seen.borrow_mut().push(probe.seen(&id, x, answer));
            if ok {
                *answered.borrow_mut() = Some(start.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    });

    let reshares: Rc<RefCell<Vec<Answer>>> = Rc::default();
    let rotation: Rc<RefCell<Vec<Answer>>> = Rc::default();
    let operator = Operator::new(world);
    let (times, answers) = (plan.reshares.clone(), Rc::clone(&reshares));
    let (rotate_at, rotated) = (plan.rotation, Rc::clone(&rotation));
    // Time for the health checks to send every commit a crashed host missed.
    let last = times.iter().chain(&rotate_at).max().copied().unwrap_or(0);
    let settle = Duration::from_millis(plan.calm_ms.max(last)) + Duration::from_secs(3);
    sim.client("operator", async move {
        let start = tokio::time::Instant::now();
        for at in times {
            tokio::time::sleep_until(start + Duration::from_millis(at)).await;
            let answer = operator.reshare().await;
            answers.borrow_mut().push(answer);
        }
        if let Some(at) = rotate_at {
            tokio::time::sleep_until(start + Duration::from_millis(at)).await;
            for approver in [1, 2] {
                let answer = operator.approve_removal(approver).await;
                rotated.borrow_mut().push(answer);
            }
        }
        tokio::time::sleep_until(start + settle).await;
        Ok(())
    });

    let mut host_failure = None;
    let mut pending: Vec<(u64, Action)> = plan
        .faults
        .iter()
        .flat_map(|&(at, fault)| actions(at, fault))
        .collect();
    pending.sort_by_key(|(at, _)| *at);
    let mut next = 0;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        while next < pending.len() && pending[next].0 <= now {
            pending[next].1.apply(&mut sim);
            next += 1;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                host_failure = Some(e.to_string());
                break;
            }
        }
    }
    drop(sim);
    let seen = seen.take();
    let served_again_after = served_again.take();
    Outcome {
        seen,
        reshares: reshares.take(),
        rotation: rotation.take(),
        served_again_after,
        host_failure,
    }
}

/// A fault's start and end, as changes to the simulation.
#[derive(Debug, Clone, Copy)]
enum Action {
    Crash(usize),
    Restart(usize),
    Partition(usize, usize),
    Repair(usize, usize),
    Latency(usize, u64),
}

fn actions(at: u64, fault: Fault) -> [(u64, Action); 2] {
    match fault {
        Fault::Crash { host, down_ms } => [
            (at, Action::Crash(host)),
            (at + down_ms, Action::Restart(host)),
        ],
        Fault::Partition { a, b, ms } => [
            (at, Action::Partition(a, b)),
            (at + ms, Action::Repair(a, b)),
        ],
        Fault::Slow {
            host,
            latency_ms,
            ms,
        } => [
            (at, Action::Latency(host, latency_ms)),
            (at + ms, Action::Latency(host, 1)),
        ],
    }
}

impl Action {
    fn apply(self, sim: &mut turmoil::Sim<'_>) {
        match self {
            Action::Crash(h) => {
                if sim.is_host_running(SERVERS[h]) {
                    sim.crash(SERVERS[h]);
                }
            }
            Action::Restart(h) => {
                if !sim.is_host_running(SERVERS[h]) {
                    sim.bounce(SERVERS[h]);
                }
            }
            Action::Partition(a, b) => sim.partition(SERVERS[a], SERVERS[b]),
            Action::Repair(a, b) => sim.repair(SERVERS[a], SERVERS[b]),
            Action::Latency(h, ms) => {
                for other in SERVERS.iter().chain(world::CALLERS.iter()) {
                    if *other != SERVERS[h] {
                        sim.set_link_latency(SERVERS[h], *other, Duration::from_millis(ms));
                    }
                }
            }
        }
    }
}

/// The custodian a plan's rotation removes.
pub const REMOVED: u32 = 2;

/// The operators inside the simulation: the coordinator's, who asks for refreshes of the
/// shares as `quorumvm reshare` does, with the coordinator's key; and the custodians', who
/// approve a rotation as `quorumvm custodian remove` does.
struct Operator {
    key: quorumvm_package::SecretKey,
    custodians: Vec<quorumvm_package::SecretKey>,
    cluster: quorumvm_wire::config::Cluster,
    http: HttpClient,
}

impl Operator {
    fn new(world: &World) -> Operator {
        let text = std::fs::read_to_string(world.coordinator.data_dir.join("coordinator.key"))
            .expect("the coordinator's key");
        let key =
            |text: &str| quorumvm_package::SecretKey::from_file_text(text).expect("an ed25519 key");
        Operator {
            key: key(&text),
            custodians: world::template().operators.iter().map(|t| key(t)).collect(),
            cluster: world.coordinator.cluster().expect("the cluster"),
            http: net::env().http(),
        }
    }

    async fn reshare(&self) -> Answer {
        let request = quorumvm_wire::clearance::ReshareRequest {
            time_ms: net::now_ms(),
        };
        self.post("/v1/reshares", &request.sign(&self.key)).await
    }

    /// Custodian `approver`'s operator's approval of removing custodian [`REMOVED`] from epoch
    /// 0, to 1-of-2.
    async fn approve_removal(&self, approver: u32) -> Answer {
        use quorumvm_wire::membership::{Change, Membership};
        let membership = Membership::without(&self.cluster, 0, REMOVED, 1).expect("a member");
        let change = Change::new(&self.cluster, &membership).expect("a change");
        let key = &self.custodians[approver as usize - 1];
        let subject = quorumvm_wire::approval::Subject::Membership(&change);
        let request = quorumvm_wire::api::MembershipApproval {
            membership,
            custodian: approver,
            signature: hex::encode(quorumvm_wire::approval::sign(key, &subject)),
        };
        self.post("/v1/memberships", &request).await
    }

    async fn post(&self, path: &str, body: &impl serde::Serialize) -> Answer {
        let reply = self
            .http
            .post(format!("{}{path}", net::url("coordinator")))
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match reply {
            Ok(r) => (
                Some(r.status.as_u16()),
                serde_json::from_slice(&r.body).unwrap_or_else(
                    |_| serde_json::json!({ "unreadable": String::from_utf8_lossy(&r.body) }),
                ),
            ),
            Err(e) => (None, serde_json::json!({ "transport": e.to_string() })),
        }
    }
}

/// A caller's client inside the simulation: signs requests as `quorumvm eval` does and posts
/// them to the coordinator.
struct Client {
    caller: &'static str,
    api_key: String,
    key: std::sync::Arc<quorumvm_package::SecretKey>,
    package_id: String,
    http: HttpClient,
    ids: RefCell<StdRng>,
}

impl Client {
    fn new(caller: &'static str, seed: u64, package_id: &str) -> Client {
        let template = world::template();
        let c = template
            .callers
            .iter()
            .find(|c| c.name == caller)
            .expect("a template caller");
        Client {
            caller,
            api_key: c.api_key.clone(),
            key: c.key.clone(),
            package_id: package_id.to_string(),
            http: net::env().http(),
            ids: RefCell::new(StdRng::seed_from_u64(
                seed ^ caller
                    .bytes()
                    .fold(0u64, |h, b| h.rotate_left(8) ^ b as u64),
            )),
        }
    }

    /// A fresh signed request, and its id.
    fn request(&self, x: i64) -> (Signed, String) {
        let request_id = format!("{:032x}", self.ids.borrow_mut().r#gen::<u128>());
        let request = CallerRequest {
            request_id: request_id.clone(),
            identity: self.caller.to_string(),
            program: "sim".into(),
            package_id: self.package_id.clone(),
            inputs: [("x".to_string(), Decimal(x.to_string()))].into(),
            private: None,
            time_ms: net::now_ms(),
        };
        (
            Signed::sign(&request, Domain::Request, &self.key),
            request_id,
        )
    }

    async fn send(&self, request: &Signed) -> Result<(u16, serde_json::Value), String> {
        let reply = self
            .http
            .post(format!("{}/v1/eval", net::url("coordinator")))
            .header("authorization", format!("Bearer {}", self.api_key))
            .json(request)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body = serde_json::from_slice(&reply.body).unwrap_or_else(
            |_| serde_json::json!({ "unreadable": String::from_utf8_lossy(&reply.body) }),
        );
        Ok((reply.status.as_u16(), body))
    }

    fn seen(
        &self,
        request_id: &str,
        x: i64,
        answer: Result<(u16, serde_json::Value), String>,
    ) -> Seen {
        let (status, body) = match answer {
            Ok((status, body)) => (Some(status), body),
            Err(e) => (None, serde_json::json!({ "transport": e })),
        };
        Seen {
            caller: self.caller,
            request_id: request_id.to_string(),
            x,
            status,
            body,
        }
    }
}

//! `quorumvm bench`: evaluations per second and latency on a running cluster, against the floor
//! of bare HTTP round trips through the same client stack, measured in the same run.
//!
//! An evaluation's critical path is the caller's request to the coordinator, the coordinator's
//! requests to the custodians (in parallel), and one round of custodian-to-custodian messages
//! per multiplication layer: `2 + depth` round trips in sequence. The floor is that many bare
//! round trips (`GET /v1/health`) one after another.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;

use quorumvm_wire::config::PoolConfig;

use crate::client::Client;
use crate::cluster::{Hosts, Layout, Link, Running};
use crate::endpoint::Endpoint;
use crate::exit::{Code, Failure, Result};
use crate::publish;

pub struct Options {
    pub dir: std::path::PathBuf,
    /// Use the cluster already running from `dir` (`quorumvm dev --dir DIR`) instead of
    /// starting a fresh one there.
    pub running: bool,
    pub requests: usize,
    pub seconds: u64,
    pub clients: usize,
    /// How the fresh cluster's servers talk (TLS unless `--insecure-loopback`): run both to
    /// see what TLS costs.
    pub link: Link,
}

const SQUARE: &str = "program bench_square\nversion 1\npolicy budget 1000000000\npolicy rate 1000000 per second\ninput x in -1000..1000\nadd t = x 7\nmul y = t t\noutput y\n";

/// `(x + 7)²` of a private x: shared by the client, one multiplication on shares, outputs
/// sealed back to the caller.
const PRIVATE_SQUARE: &str = "program bench_private\nversion 1\npolicy budget 1000000000\npolicy rate 1000000 per second\nprivate x in -1000..1000\nadd t = x 7\nmul y = t t\noutput y\n";

/// A 10-feature linear model: secret weights times visible features, each product a share
/// times a public value, so local (zero rounds). It declares every anomaly rule (audit only):
/// its traffic, features drawn afresh for each request, is the normal traffic the rules'
/// false positives are counted on.
const LINEAR: &str = "program bench_linear\nversion 1\npolicy budget 1000000000\npolicy rate 1000000 per second\n\
policy watch sweep 12 audit\npolicy watch edges 50% audit\npolicy watch near 50% audit\npolicy watch rate 5x audit\n\
input f1 in 0..1000\ninput f2 in 0..1000\ninput f3 in 0..1000\ninput f4 in 0..1000\ninput f5 in 0..1000\n\
input f6 in 0..1000\ninput f7 in 0..1000\ninput f8 in 0..1000\ninput f9 in 0..1000\ninput f10 in 0..1000\n\
secret w1 in -10..10 scale 2\nsecret w2 in -10..10 scale 2\nsecret w3 in -10..10 scale 2\nsecret w4 in -10..10 scale 2\n\
secret w5 in -10..10 scale 2\nsecret w6 in -10..10 scale 2\nsecret w7 in -10..10 scale 2\nsecret w8 in -10..10 scale 2\n\
secret w9 in -10..10 scale 2\nsecret w10 in -10..10 scale 2\n\
dot s = [w1 w2 w3 w4 w5 w6 w7 w8 w9 w10] [f1 f2 f3 f4 f5 f6 f7 f8 f9 f10]\noutput s\n";

struct Stats {
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn new(mut latencies: Vec<Duration>, elapsed: Duration) -> Stats {
        latencies.sort_unstable();
        Stats {
            count: latencies.len(),
            elapsed,
            latencies,
        }
    }
    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1e3
    }
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::Unavailable, e.to_string())
}

pub fn run(options: Options) -> Result<()> {
    if !options.running && options.dir.exists() {
        std::fs::remove_dir_all(&options.dir).map_err(|e| {
            Failure::new(
                Code::IoErr,
                format!("cannot clear {}: {e}", options.dir.display()),
            )
        })?;
    }
    let pool = PoolConfig {
        low_water: 40_000,
        batch: 5_000,
        target: 60_000,
    };
    let layout = Layout::init_for(
        &options.dir,
        0,
        pool,
        Hosts::Loopback(options.link),
        Default::default(),
    )?;
    crate::servers::runtime()?.block_on(bench(&layout, &options))
}

async fn publish_and_approve(
    client: &Client,
    layout: &Layout,
    source: &str,
    secrets: &[(String, String)],
) -> Result<String> {
    let (_, unsigned) =
        quorumvm_compiler::compile_to_package(source, "bench").map_err(Failure::data)?;
    let signed = quorumvm_package::sign(&unsigned, &layout.publisher()?).map_err(Failure::data)?;
    let pinned = publish::pinned_cluster(&layout.coordinator)?;
    let info = publish::install(
        client,
        &signed,
        &layout.publisher()?,
        secrets,
        Some(&pinned),
    )
    .await?;
    // On a cluster that already has it (a second run with --running), it may be active.
    let mut approvals = info.approvals.len();
    for i in 1..=layout.custodians.len() as u32 {
        if approvals >= info.threshold || info.approvals.contains(&i) {
            continue;
        }
        publish::approve(&layout.operator(i).await?, &info.package_id).await?;
        approvals += 1;
    }
    Ok(info.package_id)
}

/// Where a measured call takes its inputs from: the same each time, or drawn afresh.
type Inputs = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

/// How many anomaly rules fired at the server `client` talks to, by its `/metrics`.
async fn firings(client: &Client) -> Result<u64> {
    Ok(client
        .metrics()
        .await
        .map_err(fail)?
        .iter()
        .filter(|(name, _)| name.contains("anomaly_firings_total"))
        .map(|(_, v)| *v as u64)
        .sum())
}

async fn wait_for_kits(client: &Client, package: &str, want: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let metric = format!("quorumvm_kits_available{{package=\"{package}\"");
    loop {
        let have = client
            .metrics()
            .await
            .map_err(fail)?
            .iter()
            .find(|(name, _)| name.starts_with(&metric))
            .map(|(_, v)| *v)
            .unwrap_or(0.0);
        if have >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "only {have} kits of {package} after 5 minutes"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sequential<F, Fut>(n: usize, call: F) -> Result<Stats>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        call().await?;
        latencies.push(t.elapsed());
    }
    Ok(Stats::new(latencies, start.elapsed()))
}

async fn concurrent<F, Fut>(clients: usize, seconds: u64, call: F) -> Result<Stats>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let call = call.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                call().await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, Failure>(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.map_err(fail)??);
    }
    Ok(Stats::new(all, start.elapsed()))
}

fn row(label: &str, s: &Stats) {
    println!(
        "  {label:<34} {:>8.0}/s   p50 {:>7.3} ms   p99 {:>7.3} ms   ({} calls)",
        s.rate(),
        s.pct(0.5),
        s.pct(0.99),
        s.count
    );
}

async fn bench(layout: &Layout, o: &Options) -> Result<()> {
    let _running = if o.running {
        println!("Using the cluster running from {}", layout.dir.display());
        None
    } else {
        println!(
            "Starting a local cluster (coordinator + 3 custodians, k = 2) in {}",
            layout.dir.display()
        );
        Some(Running::start(layout).await?)
    };
    let client = Client::new(&layout.coordinator_at)?;
    let name = format!("bench-{}", quorumvm_wire::now_ms());
    let caller = std::sync::Arc::new(layout.enrol(&name).await?);
    let weights: Vec<(String, String)> = (1..=10)
        .map(|i| (format!("w{i}"), format!("{}.{:02}", i % 7, (i * 13) % 100)))
        .collect();
    let square = publish_and_approve(&client, layout, SQUARE, &[]).await?;
    let linear = publish_and_approve(&client, layout, LINEAR, &weights).await?;
    let private = publish_and_approve(&client, layout, PRIVATE_SQUARE, &[]).await?;
    let pinned = std::sync::Arc::new(crate::publish::pinned_cluster(&layout.coordinator)?);
    let sandbox = quorumvm_sandbox::Sandbox::new().map_err(fail)?;
    // A full pool, so that no preprocessing runs while latencies are measured (a run takes
    // fewer kits than lie between the pool's target and its low-water mark).
    let needed = layout.coordinator_config()?.pool.target;
    println!(
        "Waiting for the custodians to preprocess {needed} kits per program (dealer-free Beaver triples)..."
    );
    let t = Instant::now();
    wait_for_kits(&client, &square, needed as f64).await?;
    wait_for_kits(&client, &linear, needed as f64).await?;
    wait_for_kits(&client, &private, needed as f64).await?;
    println!("  ready after {:.1} s", t.elapsed().as_secs_f64());

    // The floor: bare round trips through the same client.
    let ping = {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move { client.ping().await.map_err(fail) }
        }
    };
    let one = sequential(o.requests, ping.clone()).await?;

    // One evaluation of `target` with inputs from `inputs`, as a call the measurements repeat.
    let evaluator = |target: crate::client::Target, inputs: Inputs| {
        let (client, caller, pinned) = (client.clone(), caller.clone(), pinned.clone());
        move || {
            let (client, caller, target, inputs, pinned) = (
                client.clone(),
                caller.clone(),
                target.clone(),
                inputs(),
                pinned.clone(),
            );
            async move {
                client
                    .eval(&caller, &target, &inputs, Some(&pinned))
                    .await
                    .map(|_| ())
                    .map_err(fail)
            }
        }
    };
    let mut summary = Vec::new();
    let mut square_rate = 0.0;
    let x_is_3: Inputs = Arc::new(|| vec![("x".to_string(), "3".to_string())]);
    let features: Inputs = Arc::new(|| {
        let mut rng = rand::thread_rng();
        (1..=10)
            .map(|i| (format!("f{i}"), rng.gen_range(0..=1000).to_string()))
            .collect()
    });
    for (name, program, inputs) in [
        ("(x+7)^2", square.clone(), x_is_3.clone()),
        ("10-feature linear model", linear.clone(), features),
        (
            "private x: (x+7)^2, sealed answer",
            private.clone(),
            x_is_3.clone(),
        ),
    ] {
        let target = client.target(&program, &sandbox).await.map_err(fail)?;
        let probe = client
            .eval(&caller, &target, &inputs(), Some(&pinned))
            .await
            .map_err(fail)?;
        let rounds = probe.rounds as usize;
        let hops = 2 + rounds;
        let floor_call = {
            let ping = ping.clone();
            move || {
                let ping = ping.clone();
                async move {
                    for _ in 0..hops {
                        ping().await?;
                    }
                    Ok(())
                }
            }
        };
        let eval_call = evaluator(target.clone(), inputs.clone());
        println!(
            "\n{name}: {rounds} round(s) per evaluation; floor = {hops} bare round trips in sequence"
        );
        let floor_seq = sequential(o.requests, floor_call.clone()).await?;
        row("floor, 1 client", &floor_seq);
        let seq = sequential(o.requests, eval_call.clone()).await?;
        row("evaluations, 1 client", &seq);
        let floor_par = concurrent(o.clients, o.seconds, floor_call).await?;
        row(&format!("floor, {} clients", o.clients), &floor_par);
        let par = concurrent(o.clients, o.seconds, eval_call).await?;
        row(&format!("evaluations, {} clients", o.clients), &par);
        println!(
            "  ratio to the floor: sequential p50 {:.2}×, {}-client throughput {:.2}× lower",
            seq.pct(0.5) / floor_seq.pct(0.5),
            o.clients,
            floor_par.rate() / par.rate()
        );
        if program == square {
            square_rate = par.rate();
        }
        summary.push((name, seq.pct(0.5), floor_seq.pct(0.5), par.rate()));
    }
    println!(
        "\nOne bare round trip: p50 {:.3} ms, p99 {:.3} ms",
        one.pct(0.5),
        one.pct(0.99)
    );
    println!(
        "Targets (issue 4): >= 1,500 evaluations/s with 8 clients; sequential p50 within 3× of the floor."
    );
    for (name, p50, floor, rate) in summary {
        println!(
            "  {name:<26} {rate:>7.0}/s ({}), p50 {:.2}× floor ({})",
            if rate >= 1500.0 { "met" } else { "missed" },
            p50 / floor,
            if p50 <= 3.0 * floor { "met" } else { "missed" }
        );
    }

    // The anomaly rules the linear model declares, over its traffic: at the coordinator (every
    // request) and at each custodian (the sessions it was in).
    let mut fired = vec![firings(&client).await?];
    for i in 1..=layout.custodians.len() as u32 {
        let config = layout.custodian_config(i)?;
        let cluster = config.cluster().map_err(Failure::data)?;
        let member = cluster
            .member(i)
            .ok_or_else(|| fail("a custodian missing from its config"))?;
        let at = Endpoint::pinned(member.url.clone(), member.tls);
        fired.push(firings(&Client::new(&at)?).await?);
    }
    println!(
        "\nAnomaly rules (sweep 12, edges 50%, near-duplicates 50%, rate 5x) on the linear model's \
         traffic, features drawn at random: fired {} times at the coordinator, {:?} at the custodians",
        fired[0],
        &fired[1..]
    );

    // Proactive resharing: a refresh of every serving version's shares, with a version of 100
    // secrets among them, idle and then while the clients evaluate.
    let hundred =
        publish_and_approve(&client, layout, &hundred_secrets(), &hundred_weights()).await?;
    wait_for_kits(&client, &hundred, 1.0).await?;
    let coordinator = layout.coordinator_side()?;
    let idle = crate::governance::reshare(&coordinator).await?;
    println!(
        "\nReshare of {} secrets in {} versions (the 100-secret one included), idle: {} ms (epoch {})",
        idle.secrets,
        idle.packages.len(),
        idle.ms,
        idle.epoch
    );
    let target = client.target(&square, &sandbox).await.map_err(fail)?;
    let square_call = evaluator(target, x_is_3);
    let during = tokio::spawn(concurrent(o.clients, o.seconds, square_call));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = crate::governance::reshare(&coordinator).await?;
    let during = during.await.map_err(fail)??;
    println!(
        "Reshare of the same while {} clients evaluate (x+7)^2: {} ms (epoch {}); every evaluation answered",
        o.clients, busy.ms, busy.epoch
    );
    row(
        &format!("evaluations around it, {} clients", o.clients),
        &during,
    );
    println!(
        "  throughput over the {} s window: {:.2}× of the same load without a reshare (the kit pools are emptied and refilled)",
        o.seconds,
        during.rate() / square_rate
    );
    Ok(())
}

/// A version with 100 secret weights: what a refresh of a large model costs.
fn hundred_secrets() -> String {
    let mut source = String::from(
        "program bench_hundred\nversion 1\npolicy budget 1000000000\npolicy rate 1000000 per second\n",
    );
    for i in 1..=100 {
        source.push_str(&format!(
            "input f{i} in 0..1000\nsecret w{i} in -10..10 scale 2\n"
        ));
    }
    let list = |p: &str| {
        (1..=100)
            .map(|i| format!("{p}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    source.push_str(&format!(
        "dot s = [{}] [{}]\noutput s\n",
        list("w"),
        list("f")
    ));
    source
}

fn hundred_weights() -> Vec<(String, String)> {
    (1..=100)
        .map(|i| (format!("w{i}"), format!("{}.{:02}", i % 9, (i * 7) % 100)))
        .collect()
}

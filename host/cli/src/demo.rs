//! `quorumvm demo`: the reference demo, end to end on a real local cluster (a coordinator and
//! three custodians, k = 2, separate processes on 127.0.0.1 with their own SQLite databases),
//! printed so that a newcomer can follow each step. Every result is checked: a wrong value
//! stops the demo with an error.

use std::path::Path;
use std::time::{Duration, Instant};

use quorumvm_package::{PackageId, package_id};
use quorumvm_sandbox::Sandbox;
use quorumvm_wire::api::{ApproveRequest, EvalResponse, VersionState};
use quorumvm_wire::config::{Cluster, PoolConfig};
use quorumvm_wire::freeze::Target as FreezeTarget;

use crate::client::{CallError, Caller, Client, Target};
use crate::cluster::{Layout, Running, wait_live};
use crate::exit::{Code, Failure, Result, read_text};
use crate::publish;

fn step(n: usize, text: &str) {
    println!("\n[{n}] {text}");
}

fn pairs(text: &str) -> Vec<(String, String)> {
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn check(ok: bool, what: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            Code::Rejected,
            format!("demo check failed: {}", what.into()),
        ))
    }
}

fn expect_refusal<T>(result: std::result::Result<T, CallError>, code: &str) -> Result<CallError> {
    match result {
        Ok(_) => Err(Failure::new(
            Code::Rejected,
            format!("demo check failed: expected a `{code}` refusal, got success"),
        )),
        Err(e) if e.code() == code => Ok(e),
        Err(e) => Err(Failure::new(
            Code::Rejected,
            format!("demo check failed: expected `{code}`, got {e}"),
        )),
    }
}

/// Runs the demo on a fresh local cluster under `work`, or on the new cluster already running
/// from `running` (a `quorumvm dev --dir` directory, or the compose cluster's `/cluster`).
pub fn run(packages: &Path, work: &Path, running: Option<&Path>) -> Result<()> {
    if let Some(dir) = running {
        if !dir.join("coordinator.toml").exists() {
            return Err(Failure::new(
                Code::NoInput,
                format!("{} holds no cluster (no coordinator.toml)", dir.display()),
            ));
        }
        let layout = Layout::init(dir, 0, PoolConfig::default())?;
        return crate::servers::runtime()?.block_on(tour(packages, &layout, Start::Running));
    }
    let dir = work.join("cluster");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| {
            Failure::new(Code::IoErr, format!("cannot clear {}: {e}", dir.display()))
        })?;
    }
    let pool = PoolConfig {
        low_water: 2_000,
        batch: 1_000,
        target: 4_000,
    };
    let layout = Layout::init(&dir, 0, pool)?;
    crate::servers::runtime()?.block_on(tour(packages, &layout, Start::Processes))
}

/// Whether the demo starts the cluster's servers itself or finds them running.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    Processes,
    Running,
}

/// Compiles, signs and installs a program; returns its id.
async fn publish_program(
    client: &Client,
    layout: &Layout,
    source: &str,
    name: &str,
    secrets: &[(String, String)],
) -> Result<(PackageId, quorumvm_core::circuit::Manifest)> {
    let (program, unsigned) =
        quorumvm_compiler::compile_to_package(source, name).map_err(Failure::data)?;
    let signed = quorumvm_package::sign(&unsigned, &layout.publisher()?).map_err(Failure::data)?;
    // The publisher pins the custodians' keys from the cluster's configuration, so a
    // coordinator cannot substitute keys of its own.
    let pinned = publish::pinned_cluster(&layout.coordinator)?;
    let info = publish::install(
        client,
        &signed,
        &layout.publisher()?,
        secrets,
        Some(&pinned),
    )
    .await?;
    check(
        info.state == VersionState::Pending,
        "a new version starts pending",
    )?;
    Ok((package_id(&signed), program.manifest))
}

async fn approve(layout: &Layout, id: &PackageId, index: u32) -> Result<VersionState> {
    let (_, info) = publish::approve(&layout.operator(index).await?, &id.to_string()).await?;
    Ok(info.state)
}

/// What a caller's side of the demo works with: the coordinator's API, a sandbox to read
/// packages in, and the cluster's keys pinned from its configuration.
struct CallerSide {
    client: Client,
    sandbox: Sandbox,
    pinned: Cluster,
}

/// Signs a request for `program`'s current version and sends it.
async fn call(
    at: &CallerSide,
    caller: &Caller,
    program: &str,
    inputs: &str,
) -> std::result::Result<EvalResponse, CallError> {
    let target = at.client.target(program, &at.sandbox).await?;
    at.client
        .eval(caller, &target, &pairs(inputs), Some(&at.pinned))
        .await
}

/// Evaluates, waiting (30 s at most) while the first preprocessing batch is made, or while the
/// coordinator cannot reach k custodians for a moment (503, as a client retries it: in
/// containers, a connection to every custodian once timed out for a second).
async fn eval(
    at: &CallerSide,
    caller: &Caller,
    program: &str,
    inputs: &str,
) -> Result<EvalResponse> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call(at, caller, program, inputs).await {
            // Right after activation: the first kits are being generated.
            Err(e)
                if matches!(e.code(), "no_preprocessing" | "too_few_custodians")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Ok(other?),
        }
    }
}

async fn tour(packages: &Path, layout: &Layout, start: Start) -> Result<()> {
    let client = Client::new(&layout.coordinator_at)?;
    let _running = match start {
        Start::Processes => {
            step(
                1,
                "Start a local cluster: a coordinator and 3 custodians (k = 2), each a process with its own SQLite database",
            );
            Some(Running::start(layout).await?)
        }
        Start::Running => {
            step(
                1,
                "The cluster already running: a coordinator and 3 custodians (k = 2), each with its own SQLite database",
            );
            wait_live(&client).await?;
            None
        }
    };
    let at = CallerSide {
        client: client.clone(),
        sandbox: Sandbox::new().map_err(|e| Failure::new(Code::IoErr, format!("{e:#}")))?,
        pinned: publish::pinned_cluster(&layout.coordinator)?,
    };
    let cluster = client.cluster().await?;
    println!("    coordinator {}", layout.coordinator_at.url);
    for c in &cluster.custodians {
        let engine = layout.custodian_config(c.index)?.engine;
        println!(
            "    custodian {} at {} (evaluator plugin under wasmtime {engine:?})",
            c.index, c.url
        );
    }

    step(
        2,
        "Compile f(x) = (x + 7)^2, sign it as the publisher and install it",
    );
    let square = read_text(&packages.join("square.qvm"))?;
    let (sq, sq_manifest) = publish_program(&client, layout, &square, "square", &[]).await?;
    println!("    package {sq}: {}", publish::describe(&sq_manifest));
    println!("    state: pending — nothing runs before k = 2 custodians approve");

    step(
        3,
        "A caller identity: its own ed25519 key, proposed at the coordinator, approved by k = 2 custodian operators",
    );
    let key = layout.propose("alice")?;
    println!(
        "    alice's key {} (the coordinator never sees the secret half; her API key is stored only as a hash)",
        key.key.public().to_hex()
    );
    let unapproved: Target = client
        .read_target("square", &sq.to_string(), &at.sandbox)
        .await?;
    let e = expect_refusal(
        client.eval(&key, &unapproved, &pairs("x=3"), None).await,
        "identity_pending",
    )?;
    println!("    before any approval: {e}");
    check(
        !layout.approve_identity("alice", &[1]).await?,
        "one approval keeps an identity pending",
    )?;
    println!("    custodian 1's operator approved: 1 of 2, still pending");
    check(
        layout.approve_identity("alice", &[3]).await?,
        "two approvals activate an identity",
    )?;
    println!(
        "    custodian 3's operator approved: ACTIVE — every custodian checked the two approvals itself"
    );
    let pending = expect_refusal(
        client.eval(&key, &unapproved, &pairs("x=3"), None).await,
        "pending",
    )?;
    println!("    evaluating the unapproved program is refused: {pending}");

    step(
        4,
        "Custodian operators review and approve (ed25519 over package id + manifest + policy + the publisher's deal of the shares)",
    );
    check(
        approve(layout, &sq, 1).await? == VersionState::Pending,
        "one approval keeps it pending",
    )?;
    println!("    custodian 1 approved: 1 of 2, still pending");
    let again = approve(layout, &sq, 1).await;
    let dup = match again {
        Err(f) if f.message.contains("duplicate_approval") => f.message,
        other => {
            return Err(Failure::new(
                Code::Rejected,
                format!(
                    "demo check failed: a second approval by custodian 1 was not refused: {:?}",
                    other.map(|_| ())
                ),
            ));
        }
    };
    println!(
        "    custodian 1 again: refused ({})",
        dup.trim_start_matches("quorumvm: ")
    );
    let deal = client.get(&format!("/v1/packages/{sq}/deal")).await?;
    let forged = publish::approval_signature(&layout.operators[0], &sq, &sq_manifest, &deal)?;
    let e = expect_refusal(
        client
            .approve(
                &sq.to_string(),
                &ApproveRequest {
                    custodian: 2,
                    signature: forged,
                },
            )
            .await,
        "bad_approval",
    )?;
    println!("    custodian 1's key posing as custodian 2: refused ({e})");
    check(
        approve(layout, &sq, 2).await? == VersionState::Active,
        "two approvals activate",
    )?;
    println!("    custodian 2 approved: 2 of 2 → ACTIVE; `square` now names this version");

    step(
        5,
        "Evaluate: alice signs each request; every custodian verifies it and checks x's range itself. x is a visible input and f has no secret, so every custodian computes it locally: 0 rounds",
    );
    for (x, want) in [("3", "100"), ("10", "289"), ("0", "49")] {
        let answer = eval(&at, &key, "square", &format!("x={x}")).await?;
        let y = &answer.outputs["y"];
        check(y == want, format!("f({x}) = {y}, expected {want}"))?;
        check(
            answer.rounds == sq_manifest.depth && answer.rounds == 0,
            "a product of visible values takes no round",
        )?;
        println!(
            "    f({x}) = {y}   ({} rounds, custodians {:?}, request {})",
            answer.rounds, answer.custodians, answer.request_id
        );
    }
    let target = client.target("square", &at.sandbox).await?;
    let request = key.prepare(&target, &pairs("x=3"), None)?.signed;
    let first = client.eval_signed(&key.api_key, &request).await?;
    check(first.outputs["y"] == "100", "a signed request answers")?;
    let e = expect_refusal(
        client.eval_signed(&key.api_key, &request).await,
        "replayed_request",
    )?;
    println!("    the same signed request sent again: {e}");
    let mallory = Caller {
        identity: "alice".into(),
        api_key: key.api_key.clone(),
        key: quorumvm_package::SecretKey::generate(),
    };
    let e = expect_refusal(
        client.eval(&mallory, &target, &pairs("x=3"), None).await,
        "bad_request_signature",
    )?;
    println!("    a request with alice's API key but not signed with her key: {e}");
    // Signed as alice, with an input the client would refuse: every server refuses it too.
    let mut loose = target.clone();
    loose.manifest.inputs[0].scale = 1;
    let e = expect_refusal(
        client.eval(&key, &loose, &pairs("x=3.5"), None).await,
        "bad_input",
    )?;
    println!("    x = 3.5 for an integer input, signed and sent anyway: {e}");

    step(
        6,
        "A credit score whose 11 decimal weights are secret: shared and sealed on the publisher's machine",
    );
    let credit = read_text(&packages.join("credit_score.qvm"))?;
    let example = credit
        .lines()
        .find_map(|l| l.strip_prefix("# example: "))
        .ok_or_else(|| Failure::data("credit_score.qvm has no example line"))?;
    let (args, expected) = example.split_once(" => ").unwrap_or((example, ""));
    let (inputs, secrets) = args.split_once(" --secret ").unwrap_or((args, ""));
    let score_inputs = inputs;
    let (cs, cs_manifest) =
        publish_program(&client, layout, &credit, "credit_score", &pairs(secrets)).await?;
    println!("    package {cs}: each custodian received only its HPKE-sealed share of each weight");
    approve(layout, &cs, 2).await?;
    check(
        approve(layout, &cs, 3).await? == VersionState::Active,
        "credit score active",
    )?;
    println!("    approved by custodians 2 and 3 → ACTIVE");
    let started = Instant::now();
    let answer = eval(&at, &key, "credit_score", inputs).await?;
    let want = expected.trim_start_matches("score=");
    let score_want = want.to_string();
    check(
        answer.outputs["score"] == want,
        format!("score {} expected {want}", answer.outputs["score"]),
    )?;
    check(
        cs_manifest.depth == answer.rounds && answer.rounds == 0,
        "a linear score of visible inputs takes no round",
    )?;
    println!(
        "    score = {} for the example applicant ({} rounds: each weight's share times a visible input is local; budget left {}; {} ms)",
        answer.outputs["score"],
        answer.rounds,
        answer.remaining_budget,
        started.elapsed().as_millis()
    );

    step(
        7,
        "A private input: the caller's client shares it and seals a share to each custodian; the custodians seal their output shares back to the caller, so the coordinator sees neither",
    );
    let private = read_text(&packages.join("salary_check.qvm"))?;
    let example = private
        .lines()
        .find_map(|l| l.strip_prefix("# example: "))
        .ok_or_else(|| Failure::data("salary_check.qvm has no example line"))?;
    let (args, expected) = example.split_once(" => ").unwrap_or((example, ""));
    let (inputs, secrets) = args.split_once(" --secret ").unwrap_or((args, ""));
    let (pv, pv_manifest) =
        publish_program(&client, layout, &private, "salary_check", &pairs(secrets)).await?;
    println!("    package {pv}: {}", publish::describe(&pv_manifest));
    approve(layout, &pv, 1).await?;
    approve(layout, &pv, 2).await?;
    let answer = eval(&at, &key, "salary_check", inputs).await?;
    for pair in expected.split_whitespace() {
        let (name, want) = pair.split_once('=').unwrap_or((pair, ""));
        check(
            answer.outputs.get(name).map(String::as_str) == Some(want),
            format!("{name} = {:?}, expected {want}", answer.outputs.get(name)),
        )?;
    }
    check(
        answer.rounds == pv_manifest.depth,
        "private evaluation rounds = depth",
    )?;
    println!(
        "    opened and reconstructed by alice's client: {} ({} round: the private salary times a secret weight needs a Beaver triple)",
        expected, answer.rounds
    );
    let target = client.target("salary_check", &at.sandbox).await?;
    let prepared = key.prepare(&target, &pairs(inputs), Some(&at.pinned))?;
    let seen = client.eval_signed(&key.api_key, &prepared.signed).await?;
    check(
        seen.outputs.is_empty() && seen.sealed_outputs.len() >= 2,
        "the coordinator's answer holds sealed shares and no value",
    )?;
    println!(
        "    what the coordinator relayed: no input or output value, {} sealed output shares (custodians {:?})",
        seen.sealed_outputs.len(),
        seen.sealed_outputs.keys().collect::<Vec<_>>()
    );

    step(
        8,
        "Governance: a budget of 3 evaluations, then a rate limit of 2 per minute",
    );
    let metered = "program metered\nversion 1\npolicy budget 3\npolicy rate 100 per second\ninput x in 0..100\nmul y = x x\noutput y\n";
    let (m, _) = publish_program(&client, layout, metered, "metered", &[]).await?;
    approve(layout, &m, 1).await?;
    approve(layout, &m, 3).await?;
    for i in 1..=3 {
        let a = eval(&at, &key, "metered", "x=4").await?;
        println!(
            "    call {i}: y = {}, budget left {}",
            a.outputs["y"], a.remaining_budget
        );
    }
    let e = expect_refusal(call(&at, &key, "metered", "x=4").await, "budget_exhausted")?;
    println!("    call 4: {e}");
    let throttled = "program throttled\nversion 1\npolicy rate 2 per minute\ninput x in 0..100\nmul y = x x\noutput y\n";
    let (t, _) = publish_program(&client, layout, throttled, "throttled", &[]).await?;
    approve(layout, &t, 2).await?;
    approve(layout, &t, 3).await?;
    for i in 1..=2 {
        eval(&at, &key, "throttled", "x=5").await?;
        println!("    call {i}: accepted");
    }
    let e = expect_refusal(call(&at, &key, "throttled", "x=5").await, "rate_limited")?;
    let retry = match &e {
        CallError::Api { retry_after, .. } => retry_after.clone().unwrap_or_default(),
        _ => String::new(),
    };
    check(
        !retry.is_empty(),
        "a rate-limited answer says when to retry",
    )?;
    println!("    call 3: {e} (Retry-After: {retry} s)");

    step(
        9,
        "Proactive resharing: the custodians refresh their shares of every secret; shares from before are useless with shares from after, and the answers do not change",
    );
    let report = crate::governance::reshare(&layout.coordinator_side()?).await?;
    check(
        report.epoch == 1 && report.behind.is_empty(),
        format!("every custodian at epoch 1: {report:?}"),
    )?;
    println!(
        "    {} secrets of {} versions refreshed in {} ms: every custodian now at share epoch {} (old shares, dealt ciphertexts and kits deleted)",
        report.secrets,
        report.packages.len(),
        report.ms,
        report.epoch
    );
    let again = eval(&at, &key, "credit_score", score_inputs).await?;
    check(
        again.outputs["score"] == score_want,
        format!(
            "score {} after the refresh, expected {score_want}",
            again.outputs["score"]
        ),
    )?;
    println!(
        "    the example applicant's score after the refresh: {} (the same)",
        again.outputs["score"]
    );

    step(
        10,
        "Emergency freeze: one custodian operator stops the credit score at its custodian at once; lifting it takes k = 2 operators",
    );
    let version = FreezeTarget::Version(cs.to_string());
    let freeze_at = |i: u32, target: FreezeTarget| async move {
        let at = layout.custodian_at(i)?;
        crate::operator::freeze_at(&layout.operators[i as usize - 1], &at, target).await
    };
    freeze_at(1, version.clone()).await?;
    let served = eval(&at, &key, "credit_score", score_inputs).await?;
    check(
        !served.custodians.contains(&1) && served.outputs["score"] == score_want,
        format!("served without custodian 1: {:?}", served.custodians),
    )?;
    println!(
        "    custodian 1's operator froze it there: the next evaluation ran on custodians {:?} (score {})",
        served.custodians, served.outputs["score"]
    );
    freeze_at(2, version.clone()).await?;
    let e = expect_refusal(
        call(&at, &key, "credit_score", score_inputs).await,
        "frozen",
    )?;
    println!("    custodian 2's operator too: fewer than k willing, so nobody serves it: {e}");
    let first =
        crate::governance::unfreeze(&layout.operator(1).await?, version.clone(), None).await?;
    check(!first.lifted, "one operator's unfreeze lifts nothing")?;
    let lifted = crate::governance::unfreeze(
        &layout.operator(3).await?,
        version,
        Some(first.unfreeze.time_ms),
    )
    .await?;
    check(lifted.lifted, "two operators' unfreeze lifts it")?;
    let again = eval(&at, &key, "credit_score", score_inputs).await?;
    check(
        again.outputs["score"] == score_want,
        format!("score {} after the unfreeze", again.outputs["score"]),
    )?;
    println!(
        "    operators 1 and 3 approved the unfreeze: served again by custodians {:?}, score {}",
        again.custodians, again.outputs["score"]
    );

    step(
        11,
        "Audit: every server's hash chain verifies (entries name identities and request ids, never values)",
    );
    let coordinator_db = layout.dir.join("coordinator/coordinator.db");
    let mut dbs = vec![("coordinator".to_string(), coordinator_db)];
    for i in 1..=layout.custodians.len() {
        dbs.push((
            format!("custodian {i}"),
            layout.dir.join(format!("custodian-{i}/custodian.db")),
        ));
    }
    for (who, db) in dbs {
        let ledger = quorumvm_ledger::Ledger::open(&db)
            .map_err(|e| Failure::new(Code::IoErr, format!("{}: {e}", db.display())))?;
        let report = ledger
            .verify_chain()
            .map_err(|e| Failure::new(Code::Rejected, format!("{who}: {e}")))?;
        println!(
            "    {who:<12} {:>4} entries, head {}…",
            report.entries,
            &hex::encode(report.head)[..16]
        );
    }
    println!(
        "\nDone. The cluster's files are in {}; `quorumvm dev --dir {}` runs it again.",
        layout.dir.display(),
        layout.dir.display()
    );
    Ok(())
}

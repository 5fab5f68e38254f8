//! The publisher is wrong, by mistake or on purpose: its deal is signed and lists exactly what
//! it sealed, so every custodian's own checks at activation pass, but one custodian's share is
//! off. Before the version serves, the custodians check together that the shares lie on one
//! polynomial: each of them refuses the version by itself, naming the custodian whose share is
//! off when that can be told (here 2-of-4) and nobody when it cannot (2-of-3). A consistent deal
//! passes and evaluates correctly, and a custodian restarted after the check serves without
//! another.

mod common;

use axum::http::StatusCode;
use common::{Cluster, PROGRAM, Program, all_refuse, all_say, codes};
use quorumvm_core::field::Fp;
use quorumvm_wire::config::Engine;
use serde_json::json;

const SECRET: [(&str, &str); 1] = [("w", "0.35")];

/// No evaluation of `program` returns a value: every member of the quorum refuses the session.
async fn no_evaluation(cluster: &Cluster, program: &Program, caller: &common::Caller) {
    let everyone = cluster.everyone();
    let refused = cluster
        .evaluate(program, &everyone, &[("x", "3")], 0, caller)
        .await
        .expect_err("an evaluation of a version that does not serve");
    assert!(
        refused.iter().all(|a| a.status != StatusCode::OK),
        "{:?}",
        codes(&refused)
    );
}

/// Every custodian refuses `program`'s shares at its check, saying `named`, and its audit log
/// holds one `shares.refused` entry naming `culprits`; after that, the version is refused for
/// good: activated again, checked again or preprocessed, and it never evaluates.
async fn refused_everywhere(
    cluster: &Cluster,
    program: &Program,
    caller: &common::Caller,
    named: &str,
    culprits: &[u32],
) {
    let answers = cluster.check_shares(program).await;
    all_refuse(&answers, 409, "shares_refused");
    for a in &answers {
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(named),
            "custodian {}: {message}",
            a.custodian
        );
    }
    for i in cluster.everyone() {
        let refusals: Vec<_> = cluster
            .audit(i)
            .into_iter()
            .filter(|(kind, d)| kind == "shares.refused" && d["package_id"] == program.id_hex)
            .map(|(_, d)| d["culprits"].clone())
            .collect();
        assert_eq!(refusals, [json!(culprits)], "custodian {i}'s audit log");
    }
    all_refuse(
        &cluster.activate_only(program, &[1, 2]).await,
        409,
        "shares_refused",
    );
    all_refuse(&cluster.check_shares(program).await, 409, "shares_refused");
    all_refuse(
        &cluster.preprocess(program, 0, 5).await,
        409,
        "shares_refused",
    );
    no_evaluation(cluster, program, caller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_of_four_refuse_a_share_off_naming_its_custodian_and_serve_a_consistent_deal() {
    let mut cluster = Cluster::start_with(2, &[Engine::Cranelift; 4], 1_000).await;
    let alice = cluster.register("alice").await;

    // A consistent deal: activated everywhere, but it serves only once checked.
    let good = cluster.publish(PROGRAM, &SECRET);
    all_say(&cluster.activate_only(&good, &[1, 2]).await, "unchecked");
    all_refuse(
        &cluster.preprocess(&good, 0, 5).await,
        409,
        "shares_unchecked",
    );
    assert_eq!(cluster.kits(1, &good).await, None, "not listed as serving");
    no_evaluation(&cluster, &good, &alice).await;
    all_say(&cluster.check_shares(&good).await, "active");
    all_say(&cluster.activate_only(&good, &[1, 2]).await, "active");
    all_say(&cluster.preprocess(&good, 0, 10).await, "stored");
    let inputs = [("x", "17")];
    let want = cluster.expected(&good, &inputs);
    for (quorum, kit) in [(&[1u32, 2, 3, 4][..], 0), (&[2, 4][..], 1)] {
        let (got, _) = cluster
            .evaluate(&good, quorum, &inputs, kit, &alice)
            .await
            .unwrap_or_else(|a| panic!("{:?}", codes(&a)));
        assert_eq!(got, want, "quorum {quorum:?}");
    }

    // Custodian 3's share is one off in a deal the publisher signed.
    let skewed = PROGRAM.replace("affine_square", "skewed");
    let bad = cluster.publish_skewed(&skewed, &SECRET, Some((3, Fp::ONE)));
    all_say(&cluster.activate_only(&bad, &[1, 2]).await, "unchecked");
    refused_everywhere(&cluster, &bad, &alice, "custodian 3's share is off", &[3]).await;

    // A restarted custodian serves the checked version from its ledger without another check,
    // and still refuses the other.
    cluster.restart(2).await;
    assert_eq!(cluster.kits(2, &good).await, Some(8));
    let (got, _) = cluster
        .evaluate(&good, &[1, 2], &inputs, 2, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", codes(&a)));
    assert_eq!(got, want);
    let restarted = cluster.preprocess(&bad, 0, 5).await;
    all_refuse(&restarted, 409, "shares_refused");
    let checks = cluster
        .audit(2)
        .into_iter()
        .filter(|(kind, _)| kind == "shares.checked")
        .count();
    assert_eq!(checks, 1, "one check recorded, none after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_of_three_refuse_a_share_off_naming_nobody() {
    let cluster = Cluster::start([Engine::Cranelift; 3], 1_000).await;
    let alice = cluster.register("alice").await;
    for off in [1, 3] {
        let name = format!("skewed_{off}");
        let bad = cluster.publish_skewed(
            &PROGRAM.replace("affine_square", &name),
            &SECRET,
            Some((off, Fp::from(7))),
        );
        all_say(&cluster.activate_only(&bad, &[2, 3]).await, "unchecked");
        // Three values, two of which may be wrong for all anyone knows: no one is named.
        refused_everywhere(&cluster, &bad, &alice, "cannot be told", &[]).await;
    }
}

//! The refresh of the shares, driven by a coordinator the attacker holds (this test): each
//! custodian moves to its new shares only when every other custodian's attestation to it
//! verifies, so a coordinator that forges, drops or replays attestations moves nobody; a
//! custodian that missed the commit takes it late; answers are the same before and after; the
//! old epoch's sessions and kits are refused once a custodian moved; a restarted custodian
//! serves its refreshed shares.

mod common;

use common::{Cluster, PROGRAM, all_refuse, all_say};
use quorumvm_wire::config::Engine;
use quorumvm_wire::order::Order;

const SECRETS: [(&str, &str); 1] = [("w", "0.35")];
const SESSION: &str = "reshare-test";

async fn epochs(cluster: &Cluster) -> Vec<u64> {
    let mut out = Vec::new();
    for i in cluster.everyone() {
        out.push(cluster.health(i).await.epoch);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_custodian_moves_without_every_attestation_and_answers_stay_the_same() {
    let mut cluster = Cluster::start([Engine::Cranelift; 3], 1_000).await;
    let alice = cluster.register("alice").await;
    let program = cluster.publish(PROGRAM, &SECRETS);
    all_say(&cluster.activate(&program, &[1, 2]).await, "active");
    all_say(&cluster.preprocess(&program, 0, 10).await, "stored");
    let inputs = [("x", "17")];
    let want = cluster.expected(&program, &inputs);
    let eval = async |cluster: &Cluster, quorum: &[u32], kit: u64| {
        cluster
            .evaluate(&program, quorum, &inputs, kit, &alice)
            .await
            .map(|(values, _)| values)
    };
    assert_eq!(eval(&cluster, &[1, 2, 3], 0).await.unwrap(), want);

    // Every custodian verifies the refresh and keeps the new shares aside: nothing changes yet.
    let answers = cluster.reshare(SESSION, &[&program]).await;
    all_say(&answers, "verified");
    let attestations = Cluster::attestations(&answers);
    assert_eq!(epochs(&cluster).await, [0, 0, 0]);
    // The same session again would leave new shares of two runs under one set of attestations:
    // refused, and the first run's shares stay. Restarted first, so that no custodian remembers
    // the session in memory: the ledger's record refuses it.
    for i in cluster.everyone() {
        cluster.restart(i).await;
    }
    all_refuse(
        &cluster.reshare(SESSION, &[&program]).await,
        409,
        "duplicate_session",
    );
    assert_eq!(eval(&cluster, &[1, 2, 3], 1).await.unwrap(), want);

    // The coordinator forges custodian 3's attestation to custodian 1, drops custodian 3's
    // attestations, or replays them under another session: nobody moves (custodian 3, given
    // the others' attestations, would: see below).
    let mut forged = attestations.clone();
    let tag = forged.0.get_mut(&3).unwrap().get_mut(&1).unwrap();
    let flipped = if tag.starts_with('0') { "1" } else { "0" };
    tag.replace_range(0..1, flipped);
    all_refuse(
        &cluster
            .commit(&[1], (SESSION, 0), &[&program], forged)
            .await,
        403,
        "bad_attestation",
    );
    let mut dropped = attestations.clone();
    dropped.0.remove(&3);
    all_refuse(
        &cluster
            .commit(&[1, 2], (SESSION, 0), &[&program], dropped.clone())
            .await,
        403,
        "bad_attestation",
    );
    all_refuse(
        &cluster
            .commit(
                &[1, 2, 3],
                ("reshare-other", 0),
                &[&program],
                attestations.clone(),
            )
            .await,
        403,
        "bad_attestation",
    );
    assert_eq!(epochs(&cluster).await, [0, 0, 0]);

    // The real commit reaches custodians 1 and 2; custodian 3 misses it.
    all_say(
        &cluster
            .commit(&[1, 2], (SESSION, 0), &[&program], attestations.clone())
            .await,
        "committed",
    );
    assert_eq!(epochs(&cluster).await, [1, 1, 0]);
    // Those that moved deleted every kit (their triples' shares would outlive the refresh).
    for i in [1, 2] {
        let db = cluster.node(i).config.data_dir.join("custodian.db");
        let kits: i64 = quorumvm_ledger::Ledger::open(&db)
            .unwrap()
            .connection()
            .query_row("SELECT COUNT(*) FROM kits", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kits, 0, "custodian {i} kept kits of the old epoch");
    }
    // A session of the old epoch is refused by those that moved; their old kits are gone.
    let refused = eval(&cluster, &[1, 2], 2).await.unwrap_err();
    all_refuse(&refused, 409, "epoch_mismatch");
    cluster.epoch.store(1, std::sync::atomic::Ordering::Relaxed);
    let refused = eval(&cluster, &[1, 2], 2).await.unwrap_err();
    all_refuse(&refused, 409, "kit_unavailable");
    // Custodian 3, still at epoch 0, refuses to preprocess at epoch 1.
    let batch = Order::Preprocess {
        session: "prep-late".into(),
        package_id: program.id_hex.clone(),
        first_kit: 10,
        count: 10,
        epoch: 1,
    };
    all_refuse(&[cluster.order(3, batch).await], 409, "epoch_mismatch");

    // The commit reaches custodian 3 late. It needs the others' attestations only (each of
    // them holds its new shares), not its own; again to custodian 1, it changes nothing.
    all_say(
        &cluster
            .commit(&[3], (SESSION, 0), &[&program], dropped)
            .await,
        "committed",
    );
    all_say(
        &cluster
            .commit(&[1], (SESSION, 0), &[&program], attestations.clone())
            .await,
        "committed",
    );
    assert_eq!(epochs(&cluster).await, [1, 1, 1]);
    all_say(&cluster.preprocess(&program, 20, 10).await, "stored");
    assert_eq!(eval(&cluster, &[1, 3], 20).await.unwrap(), want);
    assert_eq!(eval(&cluster, &[2, 3], 21).await.unwrap(), want);

    // A restart serves the refreshed shares from the ledger.
    cluster.restart(2).await;
    assert_eq!(cluster.health(2).await.epoch, 1);
    assert_eq!(eval(&cluster, &[1, 2], 22).await.unwrap(), want);
    for i in cluster.everyone() {
        let refreshed: Vec<_> = cluster
            .audit(i)
            .into_iter()
            .filter(|(kind, _)| kind == "shares.refreshed")
            .map(|(_, d)| (d["epoch"].clone(), d["shares"].clone()))
            .collect();
        assert_eq!(
            refreshed,
            [(1.into(), 1.into())],
            "custodian {i}: one refresh recorded"
        );
    }
}

//! A rotation of the membership (here: raising k, removing a custodian, then removing another
//! and moving one to its index), driven by a
//! coordinator the attacker holds (this test): every custodian deals only a membership that
//! k operators of its current cluster approved for its current epoch, moves only when every
//! other new member attests holding its new shares, serves the same answers under the new
//! threshold, keeps it across a restart (with versions approved under the old one), and a
//! custodian that leaves deletes every share it held.

mod common;

use common::{Answer, Caller, Cluster, PROGRAM, Program, all_refuse, all_say};
use quorumvm_core::field::Fp;
use quorumvm_package::SecretKey;
use quorumvm_sealing::CustodianSecretKey;
use quorumvm_wire::approval;
use quorumvm_wire::approval::Subject;
use quorumvm_wire::config::{self, CustodianEntry, Engine};
use quorumvm_wire::membership::{Approved, Change, Membership};
use quorumvm_wire::order::{ApprovalSignature, Attestations, JoiningVersion, Order};

const SECRETS: [(&str, &str); 1] = [("w", "0.35")];
const INPUTS: [(&str, &str); 1] = [("x", "17")];

/// `caller`'s evaluation of `program` on [`INPUTS`] by `quorum`, with kit `kit`: its outputs,
/// or every custodian's answer.
async fn answer(
    cluster: &Cluster,
    (program, caller): (&Program, &Caller),
    quorum: &[u32],
    kit: u64,
) -> Result<Vec<Fp>, Vec<Answer>> {
    cluster
        .evaluate(program, quorum, &INPUTS, kit, caller)
        .await
        .map(|(values, _)| values)
}

/// `membership` over the cluster `(k, entries)`, signed by operators `approvers`.
fn approve(
    cluster: &Cluster,
    (k, entries): (usize, &[CustodianEntry]),
    membership: &Membership,
    approvers: &[u32],
) -> Vec<ApprovalSignature> {
    let current = config::Cluster::new(k, entries).unwrap();
    let change = Change::new(&current, membership).unwrap();
    cluster.sign_subject(&Subject::Membership(&change), approvers)
}

fn redeal(
    session: &str,
    membership: &Membership,
    approvals: &[ApprovalSignature],
    packages: &[String],
) -> Order {
    Order::Redeal {
        session: session.into(),
        membership: membership.clone(),
        approvals: approvals.to_vec(),
        packages: packages.to_vec(),
    }
}

fn commit(
    session: &str,
    membership: &Membership,
    approvals: &[ApprovalSignature],
    packages: &[String],
    attestations: Attestations,
) -> Order {
    Order::CommitRedeal {
        session: session.into(),
        membership: membership.clone(),
        approvals: approvals.to_vec(),
        packages: packages.to_vec(),
        attestations,
    }
}

async fn epochs(cluster: &Cluster, of: &[u32]) -> Vec<u64> {
    let mut out = Vec::new();
    for &i in of {
        out.push(cluster.health(i).await.epoch);
    }
    out
}

fn count(cluster: &Cluster, index: u32, table: &str) -> i64 {
    let db = cluster.node(index).config.data_dir.join("custodian.db");
    quorumvm_ledger::Ledger::open(&db)
        .unwrap()
        .connection()
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_runs_only_as_approved_and_serves_the_same_answers() {
    let mut cluster = Cluster::start_with(2, &[Engine::Cranelift; 5], 2_000).await;
    let everyone = cluster.everyone();
    let entries = cluster.node(1).config.custodians.clone();
    let alice = cluster.register("alice").await;
    let program = cluster.publish(PROGRAM, &SECRETS);
    all_say(&cluster.activate(&program, &[1, 2]).await, "active");
    all_say(&cluster.preprocess(&program, 0, 10).await, "stored");
    let want: Vec<Fp> = cluster.expected(&program, &INPUTS);
    let eval = async |cluster: &Cluster, quorum: &[u32], kit: u64| {
        answer(cluster, (&program, &alice), quorum, kit).await
    };
    assert_eq!(eval(&cluster, &[1, 2], 0).await.unwrap(), want);
    let packages = vec![program.id_hex.clone()];

    // 2-of-5 to 3-of-5: the same machines, a higher threshold.
    let raise = Membership {
        from_epoch: 0,
        threshold: 3,
        custodians: entries.clone(),
    };
    let approvals = approve(&cluster, (2, &entries), &raise, &[1, 2]);

    // What the attacker's coordinator tries first deals nothing anywhere: one operator's
    // approval; approvals of the same membership from another epoch; a membership in which a
    // machine of its own takes custodian 5's index (no change may bring a machine in at an
    // index another leaves: a replacement is an addition, then a removal).
    let one = redeal("rotate-one", &raise, &approvals[..1], &packages);
    all_refuse(
        &cluster.order_all(&everyone, one).await,
        403,
        "not_enough_approvals",
    );
    let later = Membership {
        from_epoch: 1,
        ..raise.clone()
    };
    let stale = approve(&cluster, (2, &entries), &later, &[1, 2]);
    let replayed = redeal("rotate-stale", &raise, &stale, &packages);
    all_refuse(
        &cluster.order_all(&everyone, replayed).await,
        403,
        "bad_approval",
    );
    let mut stranger = entries.clone();
    stranger[4].sealing_key = CustodianSecretKey::generate().public().to_hex();
    let swap = Membership {
        from_epoch: 0,
        threshold: 2,
        custodians: stranger,
    };
    let swapping = redeal("rotate-swap", &swap, &approvals, &packages);
    all_refuse(
        &cluster.order_all(&everyone, swapping).await,
        400,
        "bad_membership",
    );
    for i in everyone.iter().copied() {
        assert_eq!(count(&cluster, i, "pending_shares"), 0, "custodian {i}");
    }

    // A custodian down during the re-dealing: the others' rounds fail, and nothing is kept.
    cluster.stop(3).await;
    let order = redeal("rotate-0", &raise, &approvals, &packages);
    let answers = cluster.order_all(&[1, 2, 4, 5], order).await;
    assert!(
        answers.iter().all(|a| !a.status.is_success()),
        "{:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    for i in [1, 2, 4, 5] {
        assert_eq!(count(&cluster, i, "pending_shares"), 0, "custodian {i}");
    }
    cluster.restart(3).await;

    // The approved rotation: every custodian re-deals and keeps its new shares aside.
    let answers = cluster
        .order_all(&everyone, redeal("rotate-1", &raise, &approvals, &packages))
        .await;
    all_say(&answers, "verified");
    let attestations = Cluster::attestations(&answers);
    assert_eq!(epochs(&cluster, &everyone).await, [0; 5]);
    assert_eq!(eval(&cluster, &[1, 2], 1).await.unwrap(), want);

    // Without custodian 3's attestations nobody moves; with them, those the commit reaches do.
    let mut dropped = attestations.clone();
    dropped.0.remove(&3);
    let order = commit("rotate-1", &raise, &approvals, &packages, dropped);
    all_refuse(
        &cluster.order_all(&[1, 2], order).await,
        403,
        "bad_attestation",
    );
    let order = commit(
        "rotate-1",
        &raise,
        &approvals,
        &packages,
        attestations.clone(),
    );
    all_say(&cluster.order_all(&[1, 2, 3, 4], order).await, "committed");
    assert_eq!(epochs(&cluster, &everyone).await, [1, 1, 1, 1, 0]);
    // Custodian 5 crashes before the commit reaches it; restarted, it still holds its new
    // shares aside, and takes the commit late.
    cluster.restart(5).await;
    assert_eq!(epochs(&cluster, &[5]).await, [0]);
    let order = commit("rotate-1", &raise, &approvals, &packages, attestations);
    all_say(&cluster.order_all(&[5, 1], order).await, "committed");
    assert_eq!(epochs(&cluster, &everyone).await, [1; 5]);

    let health = cluster.health(4).await;
    assert_eq!(
        (health.generation, health.threshold, health.members),
        (1, 3, vec![1, 2, 3, 4, 5])
    );
    // Threshold 3 now: two custodians are not a quorum; three serve the same answer.
    // (This test is the coordinator: it reconstructs answers with the new threshold too.)
    cluster.epoch.store(1, std::sync::atomic::Ordering::Relaxed);
    cluster.k = 3;
    all_say(&cluster.preprocess(&program, 20, 10).await, "stored");
    let refused = eval(&cluster, &[1, 2], 20).await.unwrap_err();
    all_refuse(&refused, 400, "bad_quorum");
    assert_eq!(eval(&cluster, &[1, 2, 3], 21).await.unwrap(), want);
    assert_eq!(eval(&cluster, &[3, 4, 5], 22).await.unwrap(), want);

    // A restart keeps the rotation: the version, approved by two operators under the old
    // threshold, still loads, and the new threshold holds.
    cluster.restart(2).await;
    assert_eq!(eval(&cluster, &[1, 2, 4], 23).await.unwrap(), want);

    // 3-of-5 to 2-of-4: custodian 5 leaves, approved by three operators now.
    let shrink = Membership {
        from_epoch: 1,
        threshold: 2,
        custodians: entries[..4].to_vec(),
    };
    let approvals = approve(&cluster, (3, &entries), &shrink, &[1, 2]);
    let short = redeal("rotate-2", &shrink, &approvals, &packages);
    all_refuse(
        &cluster.order_all(&everyone, short).await,
        403,
        "not_enough_approvals",
    );
    let approvals = approve(&cluster, (3, &entries), &shrink, &[1, 2, 5]);
    let answers = cluster
        .order_all(
            &everyone,
            redeal("rotate-2", &shrink, &approvals, &packages),
        )
        .await;
    all_say(&answers[..4], "verified");
    all_say(&answers[4..], "dealt");
    let attestations = Cluster::attestations(&answers[..4]);
    let order = commit("rotate-2", &shrink, &approvals, &packages, attestations);
    all_say(&cluster.order_all(&everyone, order).await, "committed");
    assert_eq!(epochs(&cluster, &everyone).await, [2; 5]);
    assert_eq!(count(&cluster, 5, "sealed_shares"), 0);
    assert_eq!(count(&cluster, 5, "refreshed_shares"), 0);
    assert_eq!(count(&cluster, 5, "kits"), 0);

    cluster.epoch.store(2, std::sync::atomic::Ordering::Relaxed);
    cluster.k = 2;
    let batch = Order::Preprocess {
        session: "prep-four".into(),
        package_id: program.id_hex.clone(),
        first_kit: 40,
        count: 10,
        epoch: 2,
    };
    all_say(&cluster.order_all(&[1, 2, 3, 4], batch).await, "stored");
    assert_eq!(eval(&cluster, &[1, 4], 40).await.unwrap(), want);
    assert_eq!(eval(&cluster, &[2, 3], 41).await.unwrap(), want);
    // Custodian 5 is in no quorum any more, by the others' reckoning.
    let refused = eval(&cluster, &[1, 5], 42).await.unwrap_err();
    assert!(
        refused
            .iter()
            .filter(|a| a.custodian == 1)
            .all(|a| a.code() == "bad_quorum"),
        "{:?}",
        refused.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    // It left: started again, it refuses, and says its data can go.
    cluster.stop(5).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let failed = quorumvm_custodian::serve(cluster.node(5).config.clone(), listener)
        .await
        .unwrap_err();
    assert!(
        format!("{failed:#}").contains("left the cluster in rotation 2"),
        "{failed:#}"
    );

    // 2-of-4 to 2-of-3: custodian 2 leaves and custodian 4 takes its index (its new shares
    // are at point 2; the rounds still reach it at 4, where the others know it until the
    // commit).
    let renumbered = Membership {
        from_epoch: 2,
        threshold: 2,
        custodians: vec![
            entries[0].clone(),
            CustodianEntry {
                index: 2,
                ..entries[3].clone()
            },
            entries[2].clone(),
        ],
    };
    let approvals = approve(&cluster, (2, &entries[..4]), &renumbered, &[1, 3]);
    let four = [1, 2, 3, 4];
    let order = redeal("rotate-3", &renumbered, &approvals, &packages);
    let (leaving, staying): (Vec<_>, Vec<_>) = cluster
        .order_all(&four, order)
        .await
        .into_iter()
        .partition(|a| a.custodian == 2);
    all_say(&leaving, "dealt");
    all_say(&staying, "verified");
    let order = commit(
        "rotate-3",
        &renumbered,
        &approvals,
        &packages,
        Cluster::attestations(&staying),
    );
    all_say(&cluster.order_all(&four, order).await, "committed");
    assert_eq!(epochs(&cluster, &four).await, [3; 4]);
    // This test, as the coordinator, now reaches index 2 at the machine that was 4.
    cluster.nodes.swap(1, 3);
    cluster.epoch.store(3, std::sync::atomic::Ordering::Relaxed);
    let batch = Order::Preprocess {
        session: "prep-three".into(),
        package_id: program.id_hex.clone(),
        first_kit: 60,
        count: 10,
        epoch: 3,
    };
    all_say(&cluster.order_all(&[1, 2, 3], batch).await, "stored");
    assert_eq!(eval(&cluster, &[1, 2], 60).await.unwrap(), want);
    assert_eq!(eval(&cluster, &[2, 3], 61).await.unwrap(), want);
    // Restarted, the renumbered machine finds itself at index 2 (its config still says 4).
    cluster.restart(2).await;
    let health = cluster.health(2).await;
    assert_eq!(
        (health.index, health.generation, health.members),
        (2, 3, vec![1, 2, 3])
    );
    assert_eq!(eval(&cluster, &[2, 3], 62).await.unwrap(), want);

    for i in [1, 3] {
        let changed: Vec<_> = cluster
            .audit(i)
            .into_iter()
            .filter(|(kind, _)| kind == "membership.changed")
            .map(|(_, d)| (d["generation"].clone(), d["threshold"].clone()))
            .collect();
        assert_eq!(
            changed,
            [
                (1.into(), 3.into()),
                (2.into(), 2.into()),
                (3.into(), 2.into())
            ],
            "custodian {i}"
        );
    }
}

/// A machine joining the cluster takes nothing on the coordinator's word (the test is the
/// coordinator, and an attacker's): it starts from its configured cluster, and refuses a chain
/// of rotations that operators of the coordinator's invention approved, a statement without k
/// approvals of the cluster it joins, one that does not bring it in, and a version without k
/// approvals, recording nothing. Given what k operators approved, it joins: it receives its
/// shares from the re-dealing, takes the commit after a crash before it, serves in any quorum,
/// and keeps serving after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_custodian_checks_for_itself_and_then_serves() {
    let mut cluster = Cluster::start([Engine::Cranelift; 3], 2_000).await;
    let entries = cluster.node(1).config.custodians.clone();
    let program = cluster.publish(PROGRAM, &SECRETS);
    all_say(&cluster.activate(&program, &[1, 2]).await, "active");
    let packages = vec![program.id_hex.clone()];
    let four = cluster.new_machine().await;
    let mut grown = entries.clone();
    grown.push(cluster.entry(four));
    let grow = Membership {
        from_epoch: 0,
        threshold: 2,
        custodians: grown,
    };
    let approvals = approve(&cluster, (2, &entries), &grow, &[1, 2]);
    let version = |approvers: &[u32]| JoiningVersion {
        package_id: program.id_hex.clone(),
        approvals: cluster.approvals(&program, approvers),
    };
    let join = |rotations: Vec<Approved>, approvals: &[ApprovalSignature], versions| Order::Join {
        session: "rotate-0".into(),
        rotations,
        membership: grow.clone(),
        approvals: approvals.to_vec(),
        versions,
    };

    // A rotation the coordinator invented: the same machines, but operators of its own, who
    // then approve the statement (from the epoch after it) and the version.
    let attackers: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
    let invented: Vec<CustodianEntry> = entries
        .iter()
        .zip(&attackers)
        .map(|(e, key)| CustodianEntry {
            operator_key: key.public().to_hex(),
            ..e.clone()
        })
        .collect();
    let taken = Membership {
        from_epoch: 0,
        threshold: 2,
        custodians: invented.clone(),
    };
    let mut grown_there = invented.clone();
    grown_there.push(cluster.entry(four));
    let grow_there = Membership {
        from_epoch: 1,
        threshold: 2,
        custodians: grown_there,
    };
    let forge = |subject: &Subject<'_>| -> Vec<ApprovalSignature> {
        attackers[..2]
            .iter()
            .zip(1..)
            .map(|(key, custodian)| ApprovalSignature {
                custodian,
                signature: hex::encode(approval::sign(key, subject)),
            })
            .collect()
    };
    let configured = config::Cluster::new(2, &entries).unwrap();
    let taking = Change::new(&configured, &taken).unwrap();
    let there = config::Cluster::new(2, &invented).unwrap();
    let growing_there = Change::new(&there, &grow_there).unwrap();
    let forged = Order::Join {
        session: "rotate-1".into(),
        rotations: vec![Approved {
            membership: taken.clone(),
            approvals: forge(&Subject::Membership(&taking)),
        }],
        membership: grow_there.clone(),
        approvals: forge(&Subject::Membership(&growing_there)),
        versions: vec![JoiningVersion {
            package_id: program.id_hex.clone(),
            approvals: forge(&Subject::Version {
                package: &program.id,
                manifest: &program.manifest,
                deal: &program.deal.digest(),
            }),
        }],
    };
    let refused = cluster.order(four, forged).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (400, "bad_membership"),
        "{}",
        refused.body
    );
    // One operator's approval of the statement; a version one operator approved; a statement
    // that brings another machine in.
    let one = cluster
        .order(four, join(vec![], &approvals[..1], vec![version(&[1, 2])]))
        .await;
    assert_eq!(one.code(), "not_enough_approvals", "{}", one.body);
    let half = cluster
        .order(four, join(vec![], &approvals, vec![version(&[1])]))
        .await;
    assert_eq!(half.code(), "not_enough_approvals", "{}", half.body);
    let mut other = grow.clone();
    other.custodians[3].sealing_key = CustodianSecretKey::generate().public().to_hex();
    let not_me = Order::Join {
        session: "rotate-0".into(),
        rotations: vec![],
        approvals: approve(&cluster, (2, &entries), &other, &[1, 2]),
        membership: other,
        versions: vec![version(&[1, 2])],
    };
    let not_me = cluster.order(four, not_me).await;
    assert_eq!(not_me.code(), "not_joining", "{}", not_me.body);
    for table in ["versions", "memberships", "pending_shares"] {
        assert_eq!(count(&cluster, four, table), 0, "{table}");
    }
    // The statement alone, without `Join`, gets it nothing either: it has no version to hold.
    let early = cluster
        .order(four, redeal("rotate-0", &grow, &approvals, &packages))
        .await;
    assert_eq!(early.code(), "not_joined", "{}", early.body);

    // What k operators approved: it joins, then the rotation runs with it.
    let joined = cluster
        .order(four, join(vec![], &approvals, vec![version(&[1, 2])]))
        .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    cluster.n = 4;
    let everyone = cluster.everyone();
    let alice = cluster.register("alice").await;
    let answers = cluster
        .order_all(&everyone, redeal("rotate-0", &grow, &approvals, &packages))
        .await;
    all_say(&answers, "verified");
    let attestations = Cluster::attestations(&answers);
    // It crashes before the commit: restarted, it is still waiting to join, with its new
    // shares kept aside, and takes the commit late.
    cluster.restart(four).await;
    assert_eq!(
        count(&cluster, four, "pending_shares"),
        SECRETS.len() as i64
    );
    let order = commit("rotate-0", &grow, &approvals, &packages, attestations);
    all_say(&cluster.order_all(&everyone, order).await, "committed");
    assert_eq!(epochs(&cluster, &everyone).await, [1; 4]);

    cluster.epoch.store(1, std::sync::atomic::Ordering::Relaxed);
    all_say(&cluster.preprocess(&program, 0, 10).await, "stored");
    let want: Vec<Fp> = cluster.expected(&program, &INPUTS);
    let eval = async |cluster: &Cluster, quorum: &[u32], kit: u64| {
        answer(cluster, (&program, &alice), quorum, kit).await
    };
    assert_eq!(eval(&cluster, &[3, 4], 0).await.unwrap(), want);
    assert_eq!(eval(&cluster, &[1, 4], 1).await.unwrap(), want);
    cluster.restart(four).await;
    assert_eq!(eval(&cluster, &[2, 4], 2).await.unwrap(), want);
}

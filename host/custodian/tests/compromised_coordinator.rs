//! The coordinator is the attacker. Three real custodians on loopback, and the test holding the
//! coordinator's keys (order signing and ticket keys) and everything it stores: packages,
//! sealed shares, deals, approvals, callers' requests. Each test tries one thing a compromised
//! coordinator would, and shows that every custodian refuses it by itself.

mod common;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use common::{Answer, Cluster, PROGRAM, all_refuse, codes};
use quorumvm_core::field::Fp;
use quorumvm_core::shamir::Share;
use quorumvm_package::{Domain, SecretKey};
use quorumvm_sealing::{CustodianSecretKey, SealedShare, ShareBinding, open_share, seal_share};
use quorumvm_wire::api::SealedShares;
use quorumvm_wire::approval::{self, Subject};
use quorumvm_wire::config::Engine;
use quorumvm_wire::deal::{Deal, share_digest};
use quorumvm_wire::freeze::Target;
use quorumvm_wire::now_ms;
use quorumvm_wire::order::{ApprovalSignature, Order};
use quorumvm_wire::request::CallerRequest;
use quorumvm_wire::signed::Signed;

const ENGINES: [Engine; 3] = [Engine::Cranelift, Engine::Cranelift, Engine::Cranelift];
const SECRET: [(&str, &str); 1] = [("w", "0.35")];

fn all_ok(answers: &[Answer]) {
    assert!(
        answers.iter().all(|a| a.status == StatusCode::OK),
        "{:?}",
        codes(answers)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_substituted_sealed_share_is_refused_at_activation() {
    let cluster = Cluster::start(ENGINES, 2_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    // The coordinator seals a share of its own choosing to custodian 1's public key (HPKE Base
    // mode lets anyone do that) and serves it in place of the publisher's.
    let binding = ShareBinding {
        package: program.id,
        custodian: 1,
        secret: "w",
        epoch: 0,
    };
    let chosen = Share {
        x: 1,
        y: Fp::from_u128(12345),
    };
    let substituted = seal_share(cluster.node(1).sealing, &binding, &chosen)
        .unwrap()
        .to_bytes();
    cluster.tamper_shares(
        &program,
        1,
        SealedShares {
            custodian: 1,
            sealed: BTreeMap::from([("w".to_string(), hex::encode(substituted))]),
        },
    );
    let answers = cluster.activate(&program, &[1, 2]).await;
    assert_eq!(
        codes(&answers),
        [
            (1, 403, "bad_deal".into()),
            (2, 200, String::new()),
            (3, 200, String::new())
        ]
    );
    assert!(
        answers[0].body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not the one the publisher dealt"),
        "{}",
        answers[0].body
    );
    assert_eq!(
        cluster.kits(1, &program).await,
        None,
        "custodian 1 does not serve it"
    );

    // Nor can it make a deal of its own that lists the substitute: the deal must be signed by
    // the package's publisher (and the operators' approvals cover the genuine deal's digest).
    let mut deal: Deal = program.deal.parse_unverified().unwrap();
    deal.custodians
        .iter_mut()
        .find(|d| d.custodian == 1)
        .unwrap()
        .shares
        .insert("w".into(), share_digest(&substituted));
    let coordinator_key = SecretKey::generate();
    let forged = Signed::sign(&deal, Domain::Deal, &coordinator_key);
    cluster.tamper_deal(&program, forged.clone());
    let a = cluster
        .activate_with(1, &program, cluster.approvals(&program, &[1, 2]))
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (403, "bad_deal"),
        "{}",
        a.body
    );
    // Even approvals of that forged deal do not help: it is not the publisher's.
    let a = cluster
        .activate_with(
            1,
            &program,
            cluster.approvals_of(&program, &forged, &[1, 2]),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (403, "bad_deal"),
        "{}",
        a.body
    );
    // Approvals of another deal than the one served do not verify.
    let fresh = cluster.publish(&PROGRAM.replace("affine_square", "fresh"), &SECRET);
    let answers = cluster
        .order_all(
            &[1, 2, 3],
            Order::Activate {
                package_id: fresh.id_hex.clone(),
                approvals: cluster.approvals_of(&fresh, &forged, &[1, 2]),
            },
        )
        .await;
    all_refuse(&answers, 403, "bad_approval");
    // A share sealed to custodian 1 and served to custodian 2 is refused as well.
    let other = cluster.publish(&PROGRAM.replace("affine_square", "other"), &SECRET);
    let stolen = SealedShares {
        custodian: 2,
        sealed: cluster.shares_of(&other, 1),
    };
    cluster.tamper_shares(&other, 2, stolen);
    let a = cluster
        .activate_with(2, &other, cluster.approvals(&other, &[1, 2]))
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (403, "bad_deal"),
        "{}",
        a.body
    );
    // The substitute really opens under custodian 1's key: only the deal stands in the way.
    let key_text =
        std::fs::read_to_string(cluster.node(1).config.data_dir.join("sealing.key")).unwrap();
    let key = CustodianSecretKey::from_file_text(&key_text).unwrap();
    let opened = open_share(
        &key,
        &binding,
        &SealedShare::from_bytes(&substituted).unwrap(),
    )
    .unwrap();
    assert_eq!(opened, chosen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identity_the_coordinator_invents_is_refused_by_every_custodian() {
    let cluster = Cluster::start(ENGINES, 1_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 2]).await);
    all_ok(&cluster.preprocess(&program, 0, 3).await);

    // Registered with one operator's approval: k = 2 are needed.
    let (_, answers) = cluster.register_with("mallory", &[1]).await;
    all_refuse(&answers, 403, "not_enough_approvals");
    // The coordinator signs an approval itself and puts it in custodian 2's slot.
    let (mallory, _) = cluster.register_with("mallory", &[1]).await;
    let public = mallory.key.public();
    let coordinator_key = SecretKey::generate();
    let mut approvals = vec![quorumvm_wire::order::ApprovalSignature {
        custodian: 1,
        signature: hex::encode(quorumvm_wire::approval::sign(
            &cluster.node(1).operator,
            &quorumvm_wire::approval::Subject::Identity {
                name: "mallory",
                key: &public,
            },
        )),
    }];
    approvals.push(quorumvm_wire::order::ApprovalSignature {
        custodian: 2,
        signature: hex::encode(quorumvm_wire::approval::sign(
            &coordinator_key,
            &quorumvm_wire::approval::Subject::Identity {
                name: "mallory",
                key: &public,
            },
        )),
    });
    let answers = cluster
        .order_all(
            &[1, 2, 3],
            Order::RegisterIdentity {
                name: "mallory".into(),
                public_key: public.to_hex(),
                approvals,
            },
        )
        .await;
    all_refuse(&answers, 403, "bad_approval");
    // A server's own actor name cannot be a caller, whatever the approvals.
    let (_, answers) = cluster.register_with("coordinator", &[1, 2]).await;
    all_refuse(&answers, 400, "bad_identity");

    // So a request in mallory's name, which the coordinator signs itself, is refused.
    let request = mallory.request(&program, &[("x", "3")]);
    let ticket = cluster.ticket(&program, &request, &[1, 2, 3], 0, 0);
    let answers = cluster.send_sessions(&ticket, &[1, 2, 3], &request).await;
    all_refuse(&answers, 403, "unknown_identity");
    // A registered identity's name on a request signed with another key: refused too.
    let alice = cluster.register("alice").await;
    let impostor = common::Caller {
        name: "alice".into(),
        key: SecretKey::generate(),
    };
    let request = impostor.request(&program, &[("x", "3")]);
    let ticket = cluster.ticket(&program, &request, &[1, 2, 3], 0, 0);
    let answers = cluster.send_sessions(&ticket, &[1, 2, 3], &request).await;
    all_refuse(&answers, 401, "bad_request_signature");
    // Re-keying alice by a new registration is refused.
    let (_, answers) = cluster.register_with("alice", &[1, 2]).await;
    all_refuse(&answers, 409, "identity_conflict");
    // Nothing was spent, and alice herself is served.
    for i in 1..=3 {
        assert_eq!(cluster.kits(i, &program).await, Some(3), "custodian {i}");
    }
    let (got, _) = cluster
        .evaluate(&program, &[1, 2, 3], &[("x", "3")], 0, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", codes(&a)));
    assert_eq!(got, cluster.expected(&program, &[("x", "3")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_or_stale_caller_request_is_refused_by_every_custodian() {
    let cluster = Cluster::start(ENGINES, 1_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 2]).await);
    all_ok(&cluster.preprocess(&program, 0, 5).await);
    let alice = cluster.register("alice").await;

    let request = alice.request(&program, &[("x", "3")]);
    let ticket = cluster.ticket(&program, &request, &[1, 2, 3], 0, 0);
    all_ok(&cluster.send_sessions(&ticket, &[1, 2, 3], &request).await);
    // The same signed request in a new session (a new kit, the same attempt): every custodian
    // remembers it, durably.
    let replay = cluster.ticket(&program, &request, &[1, 2, 3], 1, 0);
    let answers = cluster.send_sessions(&replay, &[1, 2, 3], &request).await;
    all_refuse(&answers, 409, "replayed_request");
    // A retry counts up (attempt 1) and is served, with the caller's own inputs; the same
    // attempt again, or one past the last the coordinator may make, is refused.
    let retry = cluster.ticket(&program, &request, &[1, 2, 3], 1, 1);
    all_ok(&cluster.send_sessions(&retry, &[1, 2, 3], &request).await);
    for attempt in [1, 3] {
        let replay = cluster.ticket(&program, &request, &[1, 2, 3], 2, attempt);
        let answers = cluster.send_sessions(&replay, &[1, 2, 3], &request).await;
        all_refuse(&answers, 409, "replayed_request");
    }
    // A request signed long ago (held back by the coordinator) is stale.
    let mut old: CallerRequest = alice
        .request(&program, &[("x", "3")])
        .parse_unverified()
        .unwrap();
    old.time_ms = now_ms() - 10 * 60_000;
    let stale = Signed::sign(&old, Domain::Request, &alice.key);
    let ticket = cluster.ticket(&program, &stale, &[1, 2, 3], 1, 0);
    let answers = cluster.send_sessions(&ticket, &[1, 2, 3], &stale).await;
    all_refuse(&answers, 401, "stale_request");
    for i in 1..=3 {
        assert_eq!(cluster.kits(i, &program).await, Some(3), "custodian {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_and_rate_limits_hold_at_every_custodian_across_retries_and_versions() {
    let cluster = Cluster::start(ENGINES, 500).await;
    let src = PROGRAM.replace("input x", "policy budget 3\npolicy cost 1\ninput x");
    let v1 = cluster.publish(&src, &SECRET);
    all_ok(&cluster.activate(&v1, &[1, 2]).await);
    all_ok(&cluster.preprocess(&v1, 0, 10).await);
    let bob = cluster.register("bob").await;

    // A retried request is charged once: attempt 0 on {1, 2} fails (the coordinator "loses"
    // custodian 2's ticket), attempt 1 on {1, 3} with a fresh kit succeeds.
    let request = bob.request(&v1, &[("x", "1")]);
    let first = cluster.ticket(&v1, &request, &[1, 2], 0, 0);
    let answers = cluster.send_sessions(&first, &[1], &request).await;
    assert_eq!(codes(&answers), [(1, 504, "peer_timeout".into())]);
    let retry = cluster.ticket(&v1, &request, &[1, 3], 1, 1);
    all_ok(&cluster.send_sessions(&retry, &[1, 3], &request).await);
    // Two more requests spend the budget of 3 at custodian 1 (and 2 at custodian 3) ...
    for kit in [2, 3] {
        cluster
            .evaluate(&v1, &[1, 3], &[("x", "1")], kit, &bob)
            .await
            .unwrap_or_else(|a| panic!("{:?}", codes(&a)));
    }
    // ... so a fourth is refused by custodian 1 itself, whatever the coordinator counts.
    let refused = cluster
        .evaluate(&v1, &[1, 3], &[("x", "1")], 4, &bob)
        .await
        .unwrap_err();
    assert_eq!(codes(&refused)[0], (1, 429, "budget_exhausted".into()));
    // A new version of the program does not reset the budget: it is kept per program name.
    let v2 = cluster.publish(
        &src.replace("program affine_square", "program affine_square\nversion 2"),
        &SECRET,
    );
    assert_eq!(
        (v2.manifest.name.as_str(), v2.manifest.version),
        ("affine_square", 2)
    );
    all_ok(&cluster.activate(&v2, &[2, 3]).await);
    all_ok(&cluster.preprocess(&v2, 0, 3).await);
    let refused = cluster
        .evaluate(&v2, &[1, 3], &[("x", "1")], 0, &bob)
        .await
        .unwrap_err();
    assert_eq!(codes(&refused)[0], (1, 429, "budget_exhausted".into()));

    // The rate limit too is each custodian's own.
    let throttled = cluster.publish(
        &PROGRAM
            .replace("affine_square", "throttled")
            .replace("input x", "policy rate 2 per minute\ninput x"),
        &SECRET,
    );
    all_ok(&cluster.activate(&throttled, &[1, 2]).await);
    all_ok(&cluster.preprocess(&throttled, 0, 5).await);
    for kit in [0, 1] {
        cluster
            .evaluate(&throttled, &[1, 2, 3], &[("x", "2")], kit, &bob)
            .await
            .unwrap_or_else(|a| panic!("{:?}", codes(&a)));
    }
    let refused = cluster
        .evaluate(&throttled, &[1, 2, 3], &[("x", "2")], 2, &bob)
        .await
        .unwrap_err();
    all_refuse(&refused, 429, "rate_limited");
    assert_eq!(
        cluster.kits(1, &throttled).await,
        Some(3),
        "refusals keep their kits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_out_of_range_visible_input_is_refused_by_every_custodian() {
    let cluster = Cluster::start(ENGINES, 1_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 2]).await);
    all_ok(&cluster.preprocess(&program, 0, 3).await);
    let alice = cluster.register("alice").await;
    // `x in 0..100`, scale 0. (1, M, M², ...) probes and fractions alike are refused, however
    // the request reached the custodians: they read the inputs from the caller's own request.
    for bad in [
        "101",
        "-1",
        "1000000000000",
        "1.5",
        "0.999999999999999999999",
    ] {
        let request = alice.request(&program, &[("x", bad)]);
        let ticket = cluster.ticket(&program, &request, &[1, 2, 3], 0, 0);
        let answers = cluster.send_sessions(&ticket, &[1, 2, 3], &request).await;
        all_refuse(&answers, 400, "bad_input");
    }
    let request = alice.request(&program, &[]);
    let ticket = cluster.ticket(&program, &request, &[1, 2, 3], 0, 0);
    all_refuse(
        &cluster.send_sessions(&ticket, &[1, 2, 3], &request).await,
        400,
        "bad_input",
    );
    for i in 1..=3 {
        assert_eq!(cluster.kits(i, &program).await, Some(3), "custodian {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_given_different_terms_for_one_session_refuse_it() {
    let cluster = Cluster::start(ENGINES, 500).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 2]).await);
    all_ok(&cluster.preprocess(&program, 0, 6).await);
    let alice = cluster.register("alice").await;
    let request = alice.request(&program, &[("x", "3")]);

    // One session id, but custodian 2's ticket names another kit: its terms do not hash to
    // the session id, and it refuses at once.
    let mine = cluster.ticket(&program, &request, &[1, 2], 0, 0);
    let mut theirs = cluster.ticket(&program, &request, &[1, 2], 1, 0);
    theirs.session = mine.session.clone();
    let answers = cluster
        .send_requests(vec![
            (1, cluster.request(1, &mine, &request)),
            (2, cluster.request(2, &theirs, &request)),
        ])
        .await;
    assert_eq!(
        codes(&answers),
        [
            (1, 504, "peer_timeout".into()),
            (2, 400, "bad_terms".into())
        ]
    );

    // Consistent ids but different terms (another kit; another caller request; another
    // quorum): the members are in different sessions, no message of one is taken by the
    // other, and neither answers with an output share.
    // (Each case with requests of its own: a custodian serves a request's attempt once.)
    let (first, second, other) = (
        alice.request(&program, &[("x", "3")]),
        alice.request(&program, &[("x", "3")]),
        alice.request(&program, &[("x", "4")]),
    );
    let cases = [
        (
            cluster.ticket(&program, &first, &[1, 2], 2, 0),
            first.clone(),
            cluster.ticket(&program, &first, &[1, 2], 3, 0),
            first.clone(),
        ),
        (
            cluster.ticket(&program, &second, &[1, 2], 4, 0),
            second.clone(),
            cluster.ticket(&program, &other, &[1, 2], 4, 0),
            other.clone(),
        ),
    ];
    for (one, one_request, two, two_request) in cases {
        let answers = cluster
            .send_requests(vec![
                (1, cluster.request(1, &one, &one_request)),
                (2, cluster.request(2, &two, &two_request)),
            ])
            .await;
        assert!(
            answers
                .iter()
                .all(|a| a.status == StatusCode::GATEWAY_TIMEOUT && a.body.get("outputs").is_none()),
            "{:?}",
            codes(&answers)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retired_version_is_refused_by_every_custodian() {
    let mut cluster = Cluster::start(ENGINES, 1_000).await;
    let v1 = cluster.publish(
        &PROGRAM.replace("program affine_square", "program affine_square\nversion 1"),
        &SECRET,
    );
    all_ok(&cluster.activate(&v1, &[1, 2]).await);
    all_ok(&cluster.preprocess(&v1, 0, 5).await);
    let alice = cluster.register("alice").await;
    cluster
        .evaluate(&v1, &[1, 2, 3], &[("x", "3")], 0, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", codes(&a)));

    let v3 = cluster.publish(
        &PROGRAM.replace("program affine_square", "program affine_square\nversion 3"),
        &SECRET,
    );
    all_ok(&cluster.activate(&v3, &[2, 3]).await);
    // Version 1 serves no more, whatever the coordinator asks, and its kits are gone.
    let refused = cluster
        .evaluate(&v1, &[1, 2, 3], &[("x", "3")], 1, &alice)
        .await
        .unwrap_err();
    all_refuse(&refused, 410, "retired");
    for i in 1..=3 {
        assert_eq!(cluster.kits(i, &v1).await, None, "custodian {i}");
    }
    // It cannot be activated again, and a lower version than the active one never activates.
    all_refuse(&cluster.activate(&v1, &[1, 2]).await, 410, "retired");
    let v2 = cluster.publish(
        &PROGRAM.replace("program affine_square", "program affine_square\nversion 2"),
        &SECRET,
    );
    all_refuse(&cluster.activate(&v2, &[1, 2]).await, 409, "superseded");
    // The retirement survives a restart.
    cluster.restart(1).await;
    let a = cluster
        .activate_with(1, &v1, cluster.approvals(&v1, &[1, 2]))
        .await;
    assert_eq!((a.status.as_u16(), a.code()), (410, "retired"));
    all_ok(&cluster.preprocess(&v3, 0, 2).await);
    cluster
        .evaluate(&v3, &[1, 2, 3], &[("x", "3")], 0, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", codes(&a)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_needs_k_operators_and_then_holds_for_good() {
    let mut cluster = Cluster::start(ENGINES, 1_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 2]).await);
    all_ok(&cluster.preprocess(&program, 0, 6).await);
    let alice = cluster.register("alice").await;
    let revoke_alice = Subject::Revocation { name: "alice" };

    // One operator's approval, k = 2 needed.
    let one = cluster.sign_subject(&revoke_alice, &[1]);
    all_refuse(
        &cluster.revoke_with("alice", one.clone()).await,
        403,
        "not_enough_approvals",
    );
    // The coordinator signs custodian 2's approval itself; or counts custodian 1 twice; or
    // passes off approvals of another name's revocation, or of alice's registration.
    let mut forged = one.clone();
    forged.push(ApprovalSignature {
        custodian: 2,
        signature: hex::encode(approval::sign(&cluster.coordinator, &revoke_alice)),
    });
    let mut twice = one.clone();
    twice.push(one[0].clone());
    let other_name = cluster.sign_subject(&Subject::Revocation { name: "bob" }, &[1, 2]);
    let public = alice.key.public();
    let registration = cluster.sign_subject(
        &Subject::Identity {
            name: "alice",
            key: &public,
        },
        &[1, 2],
    );
    for approvals in [forged, twice, other_name, registration] {
        all_refuse(
            &cluster.revoke_with("alice", approvals).await,
            403,
            "bad_approval",
        );
    }
    // None of it touched alice: she is served.
    let (got, _) = cluster
        .evaluate(&program, &[1, 2, 3], &[("x", "3")], 0, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", codes(&a)));
    assert_eq!(got, cluster.expected(&program, &[("x", "3")]));

    // With k operators' approvals every custodian revokes her ...
    all_ok(
        &cluster
            .revoke_with("alice", cluster.sign_subject(&revoke_alice, &[1, 3]))
            .await,
    );
    // ... and refuses her requests, signed by her own key, however the coordinator relays them.
    let refused = cluster
        .evaluate(&program, &[1, 2, 3], &[("x", "3")], 1, &alice)
        .await
        .unwrap_err();
    all_refuse(&refused, 403, "identity_revoked");
    // The coordinator cannot bring the name back, with her key or with another.
    let again = Order::RegisterIdentity {
        name: "alice".into(),
        public_key: public.to_hex(),
        approvals: cluster.sign_subject(
            &Subject::Identity {
                name: "alice",
                key: &public,
            },
            &[1, 2],
        ),
    };
    all_refuse(
        &cluster.order_all(&[1, 2, 3], again).await,
        403,
        "identity_revoked",
    );
    let (_, answers) = cluster.register_with("alice", &[1, 2, 3]).await;
    all_refuse(&answers, 403, "identity_revoked");
    // The revocation survives a restart.
    cluster.restart(2).await;
    let refused = cluster
        .evaluate(&program, &[1, 2, 3], &[("x", "3")], 1, &alice)
        .await
        .unwrap_err();
    all_refuse(&refused, 403, "identity_revoked");
    assert_eq!(cluster.health(2).await.revocations, 1);
    for i in 1..=3 {
        assert_eq!(cluster.kits(i, &program).await, Some(5), "custodian {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_operators_freeze_binds_its_custodian_at_once_and_only_k_operators_lift_it() {
    let mut cluster = Cluster::start(ENGINES, 1_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 2]).await);
    all_ok(&cluster.preprocess(&program, 0, 8).await);
    let alice = cluster.register("alice").await;
    let her = Target::Identity("alice".into());
    let version = Target::Version(program.id_hex.clone());

    // An unfreeze k operators approved earlier, which the coordinator kept; then the freeze.
    let t = now_ms();
    let old_unfreeze = cluster.unfreeze(&her, t - 1_000, &[1, 2]);
    let frozen = cluster
        .freeze(
            1,
            &cluster.freeze_statement(1, &her, t, &cluster.node(1).operator),
        )
        .await;
    assert_eq!(frozen.status, StatusCode::OK, "{}", frozen.body);
    assert_eq!(frozen.body["frozen"], true);
    // Custodian 1 refuses her at once; the others still serve her.
    let request = alice.request(&program, &[("x", "3")]);
    let ticket = cluster.ticket(&program, &request, &[1, 3], 0, 0);
    all_refuse(
        &cluster.send_sessions(&ticket, &[1], &request).await,
        403,
        "frozen",
    );
    cluster
        .evaluate(&program, &[2, 3], &[("x", "3")], 1, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", codes(&a)));

    // Nobody else freezes at custodian 1: the coordinator's key, another operator's key, a
    // statement addressed to another custodian.
    let mut later = now_ms();
    for (statement, status, code) in [
        (
            cluster.freeze_statement(1, &version, later, &cluster.coordinator),
            403,
            "not_the_operator",
        ),
        (
            cluster.freeze_statement(1, &version, later, &cluster.node(2).operator),
            403,
            "not_the_operator",
        ),
        (
            cluster.freeze_statement(2, &version, later, &cluster.node(1).operator),
            403,
            "not_the_operator",
        ),
    ] {
        let a = cluster.freeze(1, &statement).await;
        assert_eq!((a.status.as_u16(), a.code()), (status, code), "{}", a.body);
    }
    // A coordinator cannot lift it: one operator's approval, a forged one, the old unfreeze
    // replayed (older than the freeze: it lifts nothing), another target's unfreeze.
    later += 1;
    let mut forged = cluster.unfreeze(&her, later, &[1]);
    if let Order::Unfreeze { approvals, .. } = &mut forged {
        let mut second = approvals[0].clone();
        second.custodian = 2;
        approvals.push(second);
    }
    let refusals = [
        (
            cluster.unfreeze(&her, later, &[1]),
            403,
            "not_enough_approvals",
        ),
        (forged, 403, "bad_approval"),
    ];
    for (order, status, code) in refusals {
        let a = cluster.order(1, order).await;
        assert_eq!((a.status.as_u16(), a.code()), (status, code), "{}", a.body);
    }
    let replayed = cluster.order(1, old_unfreeze).await;
    assert_eq!(replayed.body["status"], "superseded", "{}", replayed.body);
    let other = cluster
        .order(1, cluster.unfreeze(&version, later, &[1, 2]))
        .await;
    assert_eq!(other.body["status"], "unfrozen", "{}", other.body);
    // Still frozen, also after a restart.
    cluster.restart(1).await;
    let request = alice.request(&program, &[("x", "3")]);
    let ticket = cluster.ticket(&program, &request, &[1, 3], 2, 0);
    all_refuse(
        &cluster.send_sessions(&ticket, &[1], &request).await,
        403,
        "frozen",
    );
    assert_eq!(
        cluster.health(1).await.frozen,
        vec![quorumvm_wire::api::Frozen {
            target: her.clone(),
            since_ms: t
        }]
    );

    // Operator 2 freezes the version at custodian 2: no quorum without 1 or 2 serves her now.
    let a = cluster
        .freeze(
            2,
            &cluster.freeze_statement(2, &version, now_ms(), &cluster.node(2).operator),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    for (quorum, kit) in [([1, 3], 3), ([2, 3], 4)] {
        let refused = cluster
            .evaluate(&program, &quorum, &[("x", "3")], kit, &alice)
            .await
            .unwrap_err();
        assert_eq!(codes(&refused)[0], (quorum[0], 403, "frozen".into()));
    }
    // k operators lift both: served everywhere again.
    let lifted = now_ms() + 1;
    all_ok(
        &cluster
            .order_all(&[1, 2, 3], cluster.unfreeze(&her, lifted, &[1, 3]))
            .await,
    );
    all_ok(
        &cluster
            .order_all(&[1, 2, 3], cluster.unfreeze(&version, lifted, &[2, 3]))
            .await,
    );
    cluster
        .evaluate(&program, &[1, 2], &[("x", "3")], 5, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", codes(&a)));
    assert!(cluster.health(1).await.frozen.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_custodian_freezes_an_extraction_sweep_itself_whatever_the_coordinator_relays() {
    let cluster = Cluster::start(ENGINES, 1_000).await;
    // `PROGRAM` with a policy that freezes a sweep of six queries.
    let watched = PROGRAM.replace(
        "program affine_square",
        "program watched_square\npolicy watch sweep 6 freeze",
    );
    let program = cluster.publish(&watched, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 2]).await);
    all_ok(&cluster.preprocess(&program, 0, 10).await);
    let alice = cluster.register("alice").await;
    // The coordinator (the test) relays a sweep of x, skipping any rule of its own: each
    // custodian sees the queries and fires by itself at the sixth.
    for (kit, x) in [10, 20, 30, 40, 50].into_iter().enumerate() {
        cluster
            .evaluate(
                &program,
                &[1, 2, 3],
                &[("x", &x.to_string())],
                kit as u64,
                &alice,
            )
            .await
            .unwrap_or_else(|a| panic!("{:?}", codes(&a)));
    }
    let swept = cluster
        .evaluate(&program, &[1, 2, 3], &[("x", "60")], 5, &alice)
        .await
        .unwrap_err();
    for i in 1..=3 {
        assert_eq!(codes(&swept)[i - 1], (i as u32, 403, "frozen".into()));
    }
    // Frozen as an identity at every custodian, whatever she asks next.
    let later = cluster
        .evaluate(&program, &[1, 2], &[("x", "3")], 6, &alice)
        .await
        .unwrap_err();
    assert_eq!(codes(&later)[0], (1, 403, "frozen".into()));
    let her = Target::Identity("alice".into());
    for i in 1..=3 {
        let frozen = cluster.health(i).await.frozen;
        assert_eq!(frozen.len(), 1, "custodian {i}");
        assert_eq!(frozen[0].target, her);
    }
    // k operators lift it everywhere.
    all_ok(
        &cluster
            .order_all(&[1, 2, 3], cluster.unfreeze(&her, now_ms() + 1, &[1, 2]))
            .await,
    );
    cluster
        .evaluate(&program, &[1, 2], &[("x", "3")], 7, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", codes(&a)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retirement_needs_k_operators_and_then_holds_for_good() {
    let mut cluster = Cluster::start(ENGINES, 1_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 2]).await);
    all_ok(&cluster.preprocess(&program, 0, 4).await);
    let alice = cluster.register("alice").await;
    let retire = Subject::Retirement {
        package: &program.id,
    };

    all_refuse(
        &cluster
            .retire_with(&program, cluster.sign_subject(&retire, &[3]))
            .await,
        403,
        "not_enough_approvals",
    );
    // A forged second approval; another version's retirement; the version's activation
    // approvals passed off as a retirement.
    let mut forged = cluster.sign_subject(&retire, &[3]);
    forged.push(ApprovalSignature {
        custodian: 1,
        signature: hex::encode(approval::sign(&cluster.coordinator, &retire)),
    });
    let fresh = cluster.publish(&PROGRAM.replace("affine_square", "fresh"), &SECRET);
    let other = cluster.sign_subject(&Subject::Retirement { package: &fresh.id }, &[1, 2]);
    for approvals in [forged, other, cluster.approvals(&program, &[1, 2])] {
        all_refuse(
            &cluster.retire_with(&program, approvals).await,
            403,
            "bad_approval",
        );
    }
    cluster
        .evaluate(&program, &[1, 2, 3], &[("x", "3")], 0, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", codes(&a)));

    // k operators retire it: every custodian refuses it, drops its kits, never activates it.
    all_ok(
        &cluster
            .retire_with(&program, cluster.sign_subject(&retire, &[2, 3]))
            .await,
    );
    let refused = cluster
        .evaluate(&program, &[1, 2, 3], &[("x", "3")], 1, &alice)
        .await
        .unwrap_err();
    all_refuse(&refused, 410, "retired");
    for i in 1..=3 {
        assert_eq!(cluster.kits(i, &program).await, None, "custodian {i}");
    }
    all_refuse(&cluster.activate(&program, &[1, 2]).await, 410, "retired");
    // A version retired before it was activated anywhere never activates either.
    let retire_fresh = Subject::Retirement { package: &fresh.id };
    all_ok(
        &cluster
            .retire_with(&fresh, cluster.sign_subject(&retire_fresh, &[1, 2]))
            .await,
    );
    all_refuse(&cluster.activate(&fresh, &[1, 2]).await, 410, "retired");
    // Both hold after a restart.
    cluster.restart(3).await;
    for p in [&program, &fresh] {
        let a = cluster
            .activate_with(3, p, cluster.approvals(p, &[1, 2]))
            .await;
        assert_eq!(
            (a.status.as_u16(), a.code()),
            (410, "retired"),
            "{}",
            a.body
        );
    }
    let refused = cluster
        .evaluate(&program, &[1, 2, 3], &[("x", "3")], 1, &alice)
        .await
        .unwrap_err();
    all_refuse(&refused, 410, "retired");
    assert_eq!(cluster.health(3).await.retirements, 2);
}

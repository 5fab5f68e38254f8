//! Three custodians in-process, with the test as their coordinator: activation, dealer-free
//! preprocessing, threshold evaluation, and everything they must refuse.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{Answer, Cluster, PROGRAM};
use quorumvm_package::SecretKey;
use quorumvm_sealing::CustodianSecretKey;
use quorumvm_wire::config::Engine;
use quorumvm_wire::order::{Order, SignedOrder, TicketKey};
use quorumvm_wire::peer::{Frame, FrameResult, SENDER_HEADER, encode_frames};

const ENGINES: [Engine; 3] = [Engine::Cranelift, Engine::Cranelift, Engine::Cranelift];
const SECRET: [(&str, &str); 1] = [("w", "0.35")];

fn statuses(answers: &[Answer]) -> Vec<(u32, u16, String)> {
    answers
        .iter()
        .map(|a| (a.custodian, a.status.as_u16(), a.code().to_string()))
        .collect()
}

fn all_ok(answers: &[Answer], status: &str) {
    for a in answers {
        assert_eq!(
            a.status,
            StatusCode::OK,
            "custodian {}: {}",
            a.custodian,
            a.body
        );
        assert_eq!(a.body["status"], status, "custodian {}", a.custodian);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_custodians_evaluate_on_dealer_free_kits() {
    // Engines may differ across a quorum: every one must give identical results.
    let cluster = Cluster::start([Engine::Cranelift, Engine::Winch, Engine::Pulley], 2_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 3]).await, "active");
    // Activation is idempotent.
    all_ok(&cluster.activate(&program, &[2, 3]).await, "active");
    for i in 1..=3 {
        assert_eq!(cluster.kits(i, &program).await, Some(0));
    }

    let stored = cluster.preprocess(&program, 0, 50).await;
    all_ok(&stored, "stored");
    assert!(stored.iter().all(|a| a.body["kits"] == 50));
    for i in 1..=3 {
        assert_eq!(cluster.kits(i, &program).await, Some(50));
    }

    let alice = cluster.register("alice").await;
    let cases: [(&[u32], &str, u64); 4] = [
        (&[1, 2, 3], "3", 0),
        (&[1, 2], "99", 1),
        (&[2, 3], "0", 2),
        (&[1, 3], "42", 3),
    ];
    for (quorum, x, kit) in cases {
        let inputs = [("x", x)];
        let (outputs, rounds) = cluster
            .evaluate(&program, quorum, &inputs, kit, &alice)
            .await
            .unwrap_or_else(|a| panic!("quorum {quorum:?}: {:?}", statuses(&a)));
        assert_eq!(
            outputs,
            cluster.expected(&program, &inputs),
            "quorum {quorum:?}, x = {x}"
        );
        assert_eq!(rounds, program.manifest.depth);
    }
    // Each custodian used the kits of the sessions it was in.
    assert_eq!(cluster.kits(1, &program).await, Some(47));
    assert_eq!(cluster.kits(2, &program).await, Some(47));
    assert_eq!(cluster.kits(3, &program).await, Some(47));

    // A batch reusing kit ids is refused whole, everywhere.
    let again = cluster.preprocess(&program, 40, 20).await;
    assert!(
        again
            .iter()
            .all(|a| a.status == StatusCode::CONFLICT && a.code() == "kit_exists"),
        "{:?}",
        statuses(&again)
    );
    assert_eq!(cluster.kits(1, &program).await, Some(47));

    let metrics = cluster
        .http
        .get(format!("{}/metrics", cluster.node(1).url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "quorumvm_custodian_sessions_started_total{custodian=\"1\"} 3",
        "quorumvm_custodian_sessions_completed_total{custodian=\"1\"} 3",
        "quorumvm_custodian_kits_generated_total{custodian=\"1\"} 50",
        "quorumvm_custodian_kits_consumed_total{custodian=\"1\"} 3",
        &format!(
            "quorumvm_custodian_kits_available{{custodian=\"1\",package_id=\"{}\"}} 47",
            program.id_hex
        ),
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_replayed_and_malformed_requests_are_refused_and_change_nothing() {
    let cluster = Cluster::start(ENGINES, 2_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 2]).await, "active");
    all_ok(&cluster.preprocess(&program, 0, 4).await, "stored");
    let alice = cluster.register("alice").await;
    let inputs = [("x", "5")];

    // A request served once; the same ticket again: its session id is spent.
    let request = alice.request(&program, &inputs);
    let ticket = cluster.ticket(&program, &request, &[1, 2], 0, 0);
    let first = cluster.send_sessions(&ticket, &[1, 2], &request).await;
    assert!(
        first.iter().all(|a| a.status == StatusCode::OK),
        "{:?}",
        statuses(&first)
    );
    let answers = cluster.send_sessions(&ticket, &[1], &request).await;
    assert_eq!(statuses(&answers), [(1, 409, "duplicate_session".into())]);
    // Another request naming the spent kit: the kit is gone.
    let other_request = alice.request(&program, &inputs);
    let replay = cluster.ticket(&program, &other_request, &[1, 2], 0, 0);
    let answers = cluster
        .send_sessions(&replay, &[1, 2], &other_request)
        .await;
    assert_eq!(
        statuses(&answers),
        [
            (1, 409, "kit_unavailable".into()),
            (2, 409, "kit_unavailable".into())
        ]
    );

    // Orders signed by someone else; tickets tagged with another key, altered, or carrying
    // another caller request than the one tagged.
    let impostor = SecretKey::generate();
    let forged = SignedOrder::sign(
        Order::Abort {
            session: "x".into(),
        },
        quorumvm_wire::now_ms(),
        &impostor,
    );
    let a = cluster.post(1, "/v1/orders", &forged).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "bad_order")
    );
    let fresh = alice.request(&program, &inputs);
    let genuine = cluster.ticket(&program, &fresh, &[1, 2], 1, 0);
    let stranger = TicketKey::new(&CustodianSecretKey::generate(), cluster.node(1).sealing);
    let forged_ticket = stranger.seal(genuine.clone(), fresh.clone(), quorumvm_wire::now_ms());
    let a = cluster.post(1, "/v1/sessions", &forged_ticket).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "bad_order")
    );
    // Custodian 2's ticket presented to custodian 1.
    let misdirected = cluster.request(2, &genuine, &fresh);
    let a = cluster.post(1, "/v1/sessions", &misdirected).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "bad_order")
    );
    let mut altered = cluster.request(1, &genuine, &fresh);
    altered.ticket = altered.ticket.replace("\"kit\":1", "\"kit\":2");
    let a = cluster.post(1, "/v1/sessions", &altered).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "bad_order")
    );
    let mut swapped = cluster.request(1, &genuine, &fresh);
    swapped.request = alice.request(&program, &[("x", "6")]);
    let a = cluster.post(1, "/v1/sessions", &swapped).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "bad_order")
    );

    // Bad quorums.
    for (quorum, why) in [
        (vec![2, 1], "unsorted"),
        (vec![1], "below threshold"),
        (vec![2, 3], "without me"),
        (vec![1, 4], "stranger"),
    ] {
        let t = cluster.ticket(&program, &fresh, &quorum, 1, 0);
        let a = cluster
            .post(1, "/v1/sessions", &cluster.request(1, &t, &fresh))
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "bad_quorum"),
            "{why}"
        );
    }
    let other = cluster.publish(&PROGRAM.replace("affine_square", "other"), &SECRET);
    let t = cluster.ticket(&other, &fresh, &[1, 2], 1, 0);
    let a = cluster
        .post(1, "/v1/sessions", &cluster.request(1, &t, &fresh))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "unknown_version")
    );
    let a = cluster
        .post(1, "/v1/sessions", &serde_json::json!({"ticket": 1}))
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "bad_json"));

    // Round messages: a stranger and itself are refused whole; a bad MAC refuses its frame.
    let round = |sender: &str| {
        let frames = encode_frames(&[Frame {
            session: "s1".into(),
            layer: 1,
            tag: "00".repeat(32),
            body: vec![0u8; 32],
        }]);
        cluster
            .http
            .post(format!("{}/v1/rounds", cluster.node(1).url()))
            .header(SENDER_HEADER, sender)
            .body(frames)
            .send()
    };
    for sender in ["7", "1"] {
        let r = round(sender).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "sender {sender}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_sender");
    }
    let r = round("2").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let results: Vec<FrameResult> = r.json().await.unwrap();
    assert_eq!(results.len(), 1);
    let refusal = results[0].as_ref().expect("a bad MAC is refused");
    assert_eq!((refusal.status, refusal.code.as_str()), (401, "bad_mac"));
    let cut = cluster
        .http
        .post(format!("{}/v1/rounds", cluster.node(1).url()))
        .header(SENDER_HEADER, "2")
        .body(vec![0u8, 9, b's'])
        .send()
        .await
        .unwrap();
    assert_eq!(cut.status(), StatusCode::BAD_REQUEST);

    // Only one approval: not activated anywhere.
    let answers = cluster.activate(&other, &[3]).await;
    assert!(
        answers
            .iter()
            .all(|a| a.status == StatusCode::FORBIDDEN && a.code() == "not_enough_approvals"),
        "{:?}",
        statuses(&answers)
    );
    for i in 1..=3 {
        assert_eq!(cluster.kits(i, &other).await, None, "custodian {i}");
    }
    // Nothing refused above consumed a kit.
    assert_eq!(cluster.kits(1, &program).await, Some(3));
    assert_eq!(cluster.kits(2, &program).await, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_custodian_enforces_the_budget_itself() {
    let cluster = Cluster::start(ENGINES, 2_000).await;
    let src = PROGRAM.replace("input x", "policy budget 2\npolicy cost 1\ninput x");
    let program = cluster.publish(&src, &SECRET);
    assert_eq!(program.manifest.policy.budget_per_identity, 2);
    all_ok(&cluster.activate(&program, &[1, 2]).await, "active");
    all_ok(&cluster.preprocess(&program, 100, 5).await, "stored");
    let (bob, carol) = (
        cluster.register("bob").await,
        cluster.register("carol").await,
    );
    for kit in [100, 101] {
        cluster
            .evaluate(&program, &[1, 2, 3], &[("x", "1")], kit, &bob)
            .await
            .unwrap_or_else(|a| panic!("{:?}", statuses(&a)));
    }
    let refused = cluster
        .evaluate(&program, &[1, 2, 3], &[("x", "1")], 102, &bob)
        .await
        .unwrap_err();
    assert!(
        refused
            .iter()
            .all(|a| a.status == StatusCode::TOO_MANY_REQUESTS && a.code() == "budget_exhausted"),
        "{:?}",
        statuses(&refused)
    );
    // The refusal kept the kit, and another identity has a budget of its own.
    assert_eq!(cluster.kits(1, &program).await, Some(3));
    cluster
        .evaluate(&program, &[1, 2, 3], &[("x", "1")], 102, &carol)
        .await
        .unwrap_or_else(|a| panic!("{:?}", statuses(&a)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborts_and_silent_peers_end_a_session() {
    let cluster = Cluster::start(ENGINES, 1_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[1, 2]).await, "active");
    all_ok(&cluster.preprocess(&program, 0, 4).await, "stored");
    let alice = cluster.register("alice").await;
    let inputs = [("x", "5")];

    // Custodian 2 never gets its ticket: custodian 1 waits, then gives up.
    let request = alice.request(&program, &inputs);
    let ticket = cluster.ticket(&program, &request, &[1, 2], 0, 0);
    let answers = cluster.send_sessions(&ticket, &[1], &request).await;
    assert_eq!(statuses(&answers), [(1, 504, "peer_timeout".into())]);

    // The coordinator aborts while custodian 1 waits (once it has taken the kit).
    let request = alice.request(&program, &inputs);
    let ticket = cluster.ticket(&program, &request, &[1, 2], 1, 0);
    let (answers, abort) = tokio::join!(cluster.send_sessions(&ticket, &[1], &request), async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.kits(1, &program).await != Some(2) {
            assert!(Instant::now() < deadline, "the session never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cluster
            .order(
                1,
                Order::Abort {
                    session: ticket.session.clone(),
                },
            )
            .await
    });
    assert_eq!(abort.body["status"], "aborted");
    assert_eq!(statuses(&answers), [(1, 409, "aborted".into())]);
    // An abort that comes first ends the session before it spends a kit.
    let request = alice.request(&program, &inputs);
    let ticket = cluster.ticket(&program, &request, &[1, 2], 2, 0);
    cluster
        .order(
            1,
            Order::Abort {
                session: ticket.session.clone(),
            },
        )
        .await;
    let answers = cluster.send_sessions(&ticket, &[1], &request).await;
    assert_eq!(statuses(&answers), [(1, 409, "aborted".into())]);
    assert_eq!(cluster.kits(1, &program).await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_custodian_serves_from_its_ledger() {
    let mut cluster = Cluster::start(ENGINES, 2_000).await;
    let program = cluster.publish(PROGRAM, &SECRET);
    all_ok(&cluster.activate(&program, &[2, 3]).await, "active");
    all_ok(&cluster.preprocess(&program, 0, 10).await, "stored");
    let alice = cluster.register("alice").await;
    let inputs = [("x", "17")];
    let want = cluster.expected(&program, &inputs);
    let (got, _) = cluster
        .evaluate(&program, &[1, 2, 3], &inputs, 0, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", statuses(&a)));
    assert_eq!(got, want);

    // While custodian 2 is down, the others still evaluate.
    cluster.stop(2).await;
    let (got, _) = cluster
        .evaluate(&program, &[1, 3], &inputs, 1, &alice)
        .await
        .unwrap_or_else(|a| panic!("{:?}", statuses(&a)));
    assert_eq!(got, want);
    // A quorum naming it fails fast at the others.
    let request = alice.request(&program, &inputs);
    let ticket = cluster.ticket(&program, &request, &[1, 2], 2, 0);
    let answers = cluster.send_sessions(&ticket, &[1], &request).await;
    assert_eq!(statuses(&answers), [(1, 502, "peer_unreachable".into())]);

    cluster.restart(2).await;
    assert_eq!(cluster.kits(2, &program).await, Some(9));
    // Its identities came back from its ledger too.
    assert_eq!(cluster.health(2).await.identities, 1);
    for (quorum, kit) in [(&[1u32, 2, 3][..], 3), (&[2, 3][..], 4)] {
        let (got, _) = cluster
            .evaluate(&program, quorum, &inputs, kit, &alice)
            .await
            .unwrap_or_else(|a| panic!("{:?}", statuses(&a)));
        assert_eq!(got, want, "quorum {quorum:?}");
    }
    assert_eq!(cluster.kits(2, &program).await, Some(7));

    // Another custodian's key is refused at start.
    let mut wrong = cluster.node(3).config.clone();
    wrong.data_dir = cluster.node(1).config.data_dir.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = quorumvm_custodian::serve(wrong, listener)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not custodian 3's sealing key"),
        "{err:#}"
    );
}

//! Classification over the Unix socket: equal to in-process, under concurrency, under overload.

use std::sync::Arc;

use classifyd::client::{text, Client, UnixClient};
use classifyd::wire::protocol::pb;

use crate::harness::*;

#[test]
fn answers_equal_the_in_process_engine() {
    let model = fixture("bert");
    let engine = in_process(&model);
    let daemon = Daemon::start(&model, &[]);
    runtime().block_on(async {
        let client = daemon.client().await;
        let info = info_body(client.info().await.unwrap());
        assert!(info.ready);
        assert_eq!(info.architecture, "BertForSequenceClassification");
        assert_eq!(info.labels, ["neg", "neu", "pos"]);
        for t in mixed_texts() {
            let r = client
                .classify(vec![text(t.as_str())], logits_opts())
                .await
                .unwrap();
            assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
            let c = classify_body(r);
            assert_eq!(c.model, "bert");
            assert_eq!(c.revision, info.revision);
            let got = &c.results[0];
            let want = local_logits(&engine, &t);
            assert!(
                max_abs_diff(&got.logits, &want) <= 1e-5,
                "{t:?}: {:?} vs {want:?}",
                got.logits
            );
            // Scores come best first and name the argmax label.
            assert_eq!(got.scores[0].label, got.label);
            assert!(got.scores.windows(2).all(|w| w[0].score >= w[1].score));
            let t = c.timings.unwrap();
            assert!(t.total_us >= t.inference_us && t.batch_size >= 1);
        }
        // Several inputs and options in one request.
        let r = client
            .classify(
                vec![
                    text("one"),
                    classifyd::client::pair("a premise", "a hypothesis"),
                ],
                pb::Options {
                    top_k: 1,
                    return_logits: false,
                    no_truncate: false,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let c = classify_body(r);
        assert_eq!(c.results.len(), 2);
        assert!(c
            .results
            .iter()
            .all(|r| r.scores.len() == 1 && r.logits.is_empty()));
    });
}

#[test]
fn sixty_four_concurrent_clients_each_get_every_answer_once() {
    let model = fixture("bert");
    let engine = in_process(&model);
    let texts = mixed_texts();
    let want: Vec<Vec<f32>> = texts.iter().map(|t| local_logits(&engine, t)).collect();
    let daemon = Daemon::start(
        &model,
        &["--max-connections", "128", "--queue-capacity", "4096"],
    );
    let (texts, want) = (Arc::new(texts), Arc::new(want));
    let batches = runtime().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..64usize {
            let (socket, texts, want) = (daemon.socket.clone(), texts.clone(), want.clone());
            tasks.spawn(async move {
                let client = Arc::new(UnixClient::connect(&socket).await.unwrap());
                // Pipelined: all 50 in flight on one connection, answers in any order.
                let calls = (0..50usize).map(|i| {
                    let client = client.clone();
                    let k = (c * 7 + i) % texts.len();
                    let t = texts[k].clone();
                    async move {
                        let req = classifyd::client::classify_request(vec![text(t)], logits_opts());
                        (k, client.call(req).await)
                    }
                });
                let answers = futures::future::join_all(calls).await;
                let mut worst = 0f32;
                for (k, r) in answers {
                    let r = r.expect("answered");
                    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
                    worst = worst.max(max_abs_diff(&classify_body(r).results[0].logits, &want[k]));
                }
                worst
            });
        }
        let mut n = 0;
        while let Some(worst) = tasks.join_next().await {
            assert!(worst.unwrap() <= 1e-5);
            n += 1;
        }
        assert_eq!(n, 64);
        let client = Client::Unix(UnixClient::connect(&daemon.socket).await.unwrap());
        info_body(client.info().await.unwrap())
    });
    assert_eq!(
        batches.computed,
        64 * 50,
        "every request computed exactly once"
    );
    assert!(
        batches.batches < 64 * 50,
        "concurrent requests were batched: {} batches",
        batches.batches
    );
}

#[test]
fn overload_answers_each_request_ok_or_overloaded_and_recovers() {
    let daemon = Daemon::start(
        &default_model(),
        &["--queue-capacity", "8", "--max-in-flight", "256"],
    );
    let long = "a long and winding review of a film that goes on and on ".repeat(12);
    runtime().block_on(async {
        let client = Arc::new(UnixClient::connect(&daemon.socket).await.unwrap());
        let calls = (0..200).map(|_| {
            let client = client.clone();
            let long = long.clone();
            async move {
                client
                    .call(classifyd::client::classify_request(
                        vec![text(long)],
                        logits_opts(),
                    ))
                    .await
            }
        });
        let answers = futures::future::join_all(calls).await;
        let (mut ok, mut overloaded) = (0, 0);
        for r in answers {
            match status(&r.expect("every request answered")) {
                pb::Status::Ok => ok += 1,
                pb::Status::Overloaded => overloaded += 1,
                s => panic!("unexpected status {s:?}"),
            }
        }
        assert_eq!(ok + overloaded, 200);
        assert!(
            ok >= 1 && overloaded >= 1,
            "ok {ok}, overloaded {overloaded}"
        );
        let r = client
            .call(classifyd::client::classify_request(
                vec![text("fine")],
                logits_opts(),
            ))
            .await
            .unwrap();
        assert_eq!(status(&r), pb::Status::Ok);
    });
}

#[test]
fn expired_deadline_is_never_computed() {
    let daemon = Daemon::start(&default_model(), &["--max-batch-size", "1"]);
    let long = "a long and winding review of a film that goes on and on ".repeat(40);
    runtime().block_on(async {
        let client = Arc::new(UnixClient::connect(&daemon.socket).await.unwrap());
        let before = info_body(
            Client::Unix(UnixClient::connect(&daemon.socket).await.unwrap())
                .info()
                .await
                .unwrap(),
        );
        // Keep the worker busy with long rows, then ask with a 1 µs budget behind them.
        let busy = {
            let client = client.clone();
            let inputs = vec![text(long.clone()); 16];
            tokio::spawn(async move {
                client
                    .call(classifyd::client::classify_request(inputs, logits_opts()))
                    .await
            })
        };
        let mut req = classifyd::client::classify_request(vec![text("quick")], logits_opts());
        if let Some(pb::request::Body::Classify(c)) = &mut req.body {
            c.deadline_us = 1;
        }
        let r = client.call(req).await.unwrap();
        assert_eq!(status(&r), pb::Status::DeadlineExceeded, "{}", r.message);
        assert_eq!(status(&busy.await.unwrap().unwrap()), pb::Status::Ok);
        let after = info_body(
            Client::Unix(UnixClient::connect(&daemon.socket).await.unwrap())
                .info()
                .await
                .unwrap(),
        );
        assert_eq!(
            after.computed - before.computed,
            1,
            "only the busy request was computed"
        );
    });
}

//! `serve --metrics-addr`: Prometheus text exposition, health probes, loopback only.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use classifyd::client::text;
use classifyd::wire::protocol::pb;

use crate::harness::*;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (status code, body) of `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").expect("no end of head");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(head.contains("Connection: close"), "{head}");
    Ok((code, body.to_string()))
}

struct Sample {
    name: String,
    labels: String,
    value: f64,
}

/// A strict line-level check of the Prometheus text format (0.0.4): every sample line is
/// `name{labels} value` with a float value and belongs to a family with a `# TYPE`.
fn parse(exposition: &str) -> Vec<Sample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in exposition.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, tail) = (parts.next(), parts.next(), parts.next());
            match kind {
                Some("TYPE") => {
                    let (name, tail) = (name.unwrap(), tail.unwrap());
                    assert!(name_ok(name), "{line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.into(), tail.into()).is_none(),
                        "twice: {line}"
                    );
                }
                Some("HELP") => assert!(name_ok(name.unwrap()), "{line}"),
                _ => panic!("unexpected comment: {line}"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a float: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').expect(line);
                for pair in split_labels(l) {
                    let (k, v) = pair.split_once('=').expect(line);
                    assert!(name_ok(k), "{line}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
                (n, l)
            }
            None => (series, ""),
        };
        assert!(name_ok(name), "{line}");
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no # TYPE for {line}");
        samples.push(Sample {
            name: name.into(),
            labels: labels.into(),
            value,
        });
    }
    samples
}

/// Splits `a="x",b="y"` at commas outside quotes.
fn split_labels(l: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in l.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&l[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < l.len() {
        out.push(&l[start..]);
    }
    out
}

/// The sample `name` whose labels include every one of `labels` (a series may carry more,
/// as each carries its `model`).
fn value(samples: &[Sample], name: &str, labels: &str) -> f64 {
    let want: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    samples
        .iter()
        .find(|s| {
            let have: Vec<&str> = s.labels.split(',').collect();
            s.name == name && want.iter().all(|w| have.contains(w))
        })
        .unwrap_or_else(|| panic!("no {name}{{{labels}}}"))
        .value
}

#[test]
fn metrics_and_probes_over_loopback_http() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut daemon = Daemon::start(&fixture("bert"), &["--metrics-addr", &addr.to_string()]);
    let (ok, invalid) = (5u64, 3u64);
    runtime().block_on(async {
        let client = daemon.client().await;
        for i in 0..ok {
            let r = client
                .classify(vec![text(format!("sentence number {i}"))], logits_opts())
                .await
                .unwrap();
            assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
        }
        for _ in 0..invalid {
            // No inputs at all.
            let r = client.classify(vec![], logits_opts()).await.unwrap();
            assert_eq!(status(&r), pb::Status::InvalidArgument, "{}", r.message);
        }
    });

    assert_eq!(get(addr, "/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(get(addr, "/readyz").unwrap().0, 200);
    assert_eq!(get(addr, "/nope").unwrap().0, 404);
    let (code, body) = get(addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    let samples = parse(&body);
    // And through an independent Prometheus text-format parser.
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("prometheus-parse reads the exposition");
    for family in [
        "classifyd_requests_total",
        "classifyd_request_seconds",
        "classifyd_model_info",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric.starts_with(family)),
            "prometheus-parse found no {family}"
        );
    }

    let requests = |s: &str| {
        value(
            &samples,
            "classifyd_requests_total",
            &format!("status=\"{s}\""),
        )
    };
    assert_eq!(requests("ok"), ok as f64, "{body}");
    assert_eq!(requests("invalid_argument"), invalid as f64, "{body}");
    assert_eq!(requests("overloaded"), 0.0);
    assert_eq!(
        value(&samples, "classifyd_request_seconds_count", ""),
        ok as f64
    );
    assert!(value(&samples, "classifyd_request_seconds_sum", "") > 0.0);
    for h in [
        "classifyd_queue_seconds",
        "classifyd_tokenize_seconds",
        "classifyd_inference_seconds",
        "classifyd_request_seconds",
        "classifyd_batch_rows",
        "classifyd_batch_padded_tokens",
    ] {
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == format!("{h}_bucket"))
            .collect();
        assert!(buckets.len() > 2, "{h}");
        assert!(
            buckets.windows(2).all(|w| w[0].value <= w[1].value),
            "{h} buckets not cumulative"
        );
        let last = buckets.last().unwrap();
        assert!(last.labels.ends_with("le=\"+Inf\""), "{h}: {}", last.labels);
        assert_eq!(
            last.value,
            value(&samples, &format!("{h}_count"), ""),
            "{h}"
        );
    }
    // The smallest latency bucket is microseconds wide.
    let first = samples
        .iter()
        .find(|s| s.name == "classifyd_request_seconds_bucket")
        .unwrap();
    let le: f64 = first
        .labels
        .rsplit(',')
        .next()
        .unwrap()
        .trim_start_matches("le=\"")
        .trim_end_matches('"')
        .parse()
        .unwrap();
    assert!((le - 25e-6).abs() < 1e-12, "{}", first.labels);
    // Warm-up passes run before metrics exist; every request here ran in some batch.
    let batches = value(&samples, "classifyd_batches_total", "");
    assert!(batches >= 1.0 && batches <= ok as f64, "{body}");
    assert_eq!(value(&samples, "classifyd_batch_rows_count", ""), batches);
    assert_eq!(value(&samples, "classifyd_computed_total", ""), ok as f64);
    assert_eq!(value(&samples, "classifyd_queue_depth", ""), 0.0);
    assert_eq!(value(&samples, "classifyd_requests_in_flight", ""), 0.0);
    assert!(value(&samples, "classifyd_process_resident_memory_bytes", "") > 1e6);
    let info = samples
        .iter()
        .find(|s| s.name == "classifyd_model_info")
        .expect("model info");
    assert_eq!(info.value, 1.0);
    for l in [
        "model=\"bert\"",
        "device=\"cpu\"",
        "architecture=\"BertForSequenceClassification\"",
    ] {
        assert!(info.labels.contains(l), "{}", info.labels);
    }
    assert!(info.labels.contains("revision=\"") && info.labels.contains("dtype=\""));

    daemon.signal(libc::SIGTERM);
    assert_eq!(exit_code(daemon.wait()), "exit 0", "{}", daemon.stderr());
    assert!(
        get(addr, "/healthz").is_err(),
        "metrics listener outlived the daemon"
    );
}

#[test]
fn a_non_loopback_metrics_addr_is_refused() {
    let addr = format!("0.0.0.0:{}", free_port());
    let mut daemon = Daemon::spawn(
        &fixture("bert"),
        None,
        &["--metrics-addr", &addr],
        Launch::default(),
    );
    assert_eq!(exit_code(daemon.wait()), "exit 1");
    let err = daemon.stderr();
    assert!(
        err.contains("not a loopback address") && err.contains(&addr),
        "{err}"
    );
}

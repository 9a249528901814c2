//! The wire path around the engine, without sockets: a framed protobuf request decoded the way
//! the daemon reads it (length-delimited codec, then `protocol::decode_request` and
//! `convert::inputs`), and the reply encoded and framed. One text and 32 texts per request.

use bytes::BytesMut;
use classifyd::client::{classify_request, text};
use classifyd::service::convert;
use classifyd::wire::frame;
use classifyd::wire::protocol::{self, pb, RequestLimits};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prost::Message;
use tokio_util::codec::Decoder;

const TEXT: &str = "a quietly moving film with two fine performances at its heart";

fn request(n: usize) -> pb::Request {
    classify_request(
        (0..n).map(|i| text(format!("{TEXT} #{i}"))).collect(),
        pb::Options::default(),
    )
}

fn response(n: usize) -> pb::Response {
    let result = pb::Result {
        label: "POSITIVE".into(),
        score: 0.987,
        scores: vec![
            pb::LabelScore {
                label: "POSITIVE".into(),
                score: 0.987,
            },
            pb::LabelScore {
                label: "NEGATIVE".into(),
                score: 0.013,
            },
        ],
        logits: Vec::new(),
        tokens: 13,
        ..Default::default()
    };
    pb::Response {
        version: protocol::VERSION,
        id: 42,
        status: pb::Status::Ok as i32,
        message: String::new(),
        body: Some(pb::response::Body::Classify(pb::ClassifyResponse {
            results: vec![result; n],
            model: "sentiment-minilm".into(),
            revision: "0123456789abcdef".into(),
            timings: Some(pb::Timings {
                queue_us: 12,
                tokenize_us: 25,
                inference_us: 11_000,
                total_us: 11_050,
                batch_size: 1,
            }),
        })),
    }
}

fn frames(c: &mut Criterion) {
    let limits = RequestLimits::default();
    let mut group = c.benchmark_group("frame");
    for n in [1usize, 32] {
        group.throughput(Throughput::Elements(n as u64));
        let req = request(n);
        let framed = frame::encode(&req.encode_to_vec());
        group.bench_with_input(BenchmarkId::new("request_encode", n), &req, |b, req| {
            b.iter(|| frame::encode(&req.encode_to_vec()))
        });
        group.bench_with_input(
            BenchmarkId::new("request_decode", n),
            &framed,
            |b, framed| {
                let mut codec = frame::codec(1 << 20);
                b.iter(|| {
                    let mut buf = BytesMut::from(&framed[..]);
                    let payload = codec.decode(&mut buf).expect("frame").expect("whole frame");
                    let req = protocol::decode_request(&payload).expect("valid request");
                    match req.body {
                        Some(pb::request::Body::Classify(c)) => {
                            convert::inputs(&c, &limits).expect("within limits")
                        }
                        _ => unreachable!(),
                    }
                })
            },
        );
        let resp = response(n);
        group.bench_with_input(BenchmarkId::new("response_encode", n), &resp, |b, resp| {
            b.iter(|| frame::encode(&resp.encode_to_vec()))
        });
    }
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);

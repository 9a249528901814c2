//! Forward pass of the committed default model (MiniLM-L6 sentiment) at batch 1, 8 and 32 on
//! texts of exactly 16 and 64 tokens, tokenization excluded. The PyTorch figures for the same
//! ids come from benches/peers/torch_forward.py; benches/peers/compare_forward.sh runs both.

use std::path::PathBuf;

use classifyd::engine::tokenize::{Encoded, Input};
use classifyd::engine::{DTypeChoice, DeviceChoice, Engine};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// The same text as benches/peers/torch_forward.py.
pub const TEXT: &str =
    "the film opens with a quiet scene in a small town where nothing much happens, \
    and yet every frame feels deliberate; the actors carry the story with restraint, the music \
    never tells you what to feel, and by the end the slow pace has earned its emotional payoff \
    in a way few recent dramas manage, and the final scene lingers in the mind long after the \
    credits have rolled";

/// `[CLS]`, the first `n - 2` word pieces, `[SEP]`.
fn exactly(engine: &Engine, n: usize) -> Encoded {
    let full = engine
        .tokenize(&Input::Text(TEXT.into()), true)
        .expect("tokenizes");
    assert!(full.len() >= n, "bench text is only {} tokens", full.len());
    let mut ids = full.ids[..n - 1].to_vec();
    ids.push(*full.ids.last().expect("non-empty"));
    Encoded {
        type_ids: vec![0; n],
        ids,
        spans: None,
    }
}

fn forward(c: &mut Criterion) {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/sentiment-minilm");
    let engine = Engine::load(&model, DeviceChoice::Cpu, DTypeChoice::Auto).expect("default model");
    let mut group = c.benchmark_group("forward");
    group.sample_size(30);
    for tokens in [16usize, 64] {
        let one = exactly(&engine, tokens);
        for batch in [1usize, 8, 32] {
            let inputs: Vec<&Encoded> = std::iter::repeat_n(&one, batch).collect();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{tokens}tok"), format!("b{batch}")),
                &inputs,
                |b, inputs| b.iter(|| engine.logits(inputs).expect("forward")),
            );
        }
    }
    group.finish();
}

fn tokenize(c: &mut Criterion) {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/sentiment-minilm");
    let engine = Engine::load(&model, DeviceChoice::Cpu, DTypeChoice::Auto).expect("default model");
    let input = Input::Text(TEXT.into());
    c.bench_function("tokenize/56tok", |b| {
        b.iter(|| engine.tokenize(&input, true))
    });
}

criterion_group!(benches, forward, tokenize);
criterion_main!(benches);

//! Tokenization with the default model's tokenizer.json through the engine's own API
//! (`Engine::tokenize`, i.e. `TextTokenizer::encode` with truncation at 512 tokens), as the
//! daemon does it for every request: a short text, a long one (cut to 512), a sentence pair,
//! and all 300 texts of benches/texts/tweets.txt (the peer scripts' texts) per iteration.

use std::path::PathBuf;

use classifyd::engine::tokenize::Input;
use classifyd::engine::{DTypeChoice, DeviceChoice, Engine};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SHORT: &str = "a quietly moving film with two fine performances at its heart";
const SENTENCE: &str = "the film opens with a quiet scene in a small town where nothing much \
    happens, and yet every frame feels deliberate; the actors carry the story with restraint. ";
const PREMISE: &str = "the actors carry the story with restraint, and the music never tells \
    you what to feel";
const HYPOTHESIS: &str = "the performances are understated";

fn tokenize(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let engine = Engine::load(
        &root.join("models/sentiment-minilm"),
        DeviceChoice::Cpu,
        DTypeChoice::Auto,
    )
    .expect("default model");
    let tweets: Vec<Input> = std::fs::read_to_string(root.join("benches/texts/tweets.txt"))
        .expect("benches/texts/tweets.txt")
        .lines()
        .map(|l| Input::Text(l.to_owned()))
        .collect();
    let long = Input::Text(SENTENCE.repeat(40));
    let cases = [
        ("short", Input::Text(SHORT.into())),
        ("long", long),
        ("pair", Input::Pair(PREMISE.into(), HYPOTHESIS.into())),
    ];

    let mut group = c.benchmark_group("tokenize");
    for (name, input) in &cases {
        let n = engine.tokenize(input, true).expect("tokenizes").len();
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{name}/{n}tok"), |b| {
            b.iter(|| {
                engine
                    .tokenize(std::hint::black_box(input), true)
                    .expect("tokenizes")
            })
        });
    }
    group.sample_size(20);
    group.throughput(Throughput::Elements(tweets.len() as u64));
    group.bench_function(format!("tweets/{}texts", tweets.len()), |b| {
        b.iter(|| {
            tweets
                .iter()
                .map(|t| engine.tokenize(t, true).expect("tokenizes").len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, tokenize);
criterion_main!(benches);

//! A whole model directory load with a fuzzed config.json (and, optionally, a fuzzed
//! tokenizer_config.json) over one of the committed test fixtures' real weights and tokenizer,
//! then one batch classified: a config the loader accepts must not panic, blow up memory or
//! hang later in the forward pass. Input: 1 byte choosing the fixture, config.json, then
//! optionally a NUL byte (never valid inside JSON) and tokenizer_config.json.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use classifyd::engine::{DTypeChoice, DeviceChoice, Engine};
use classifyd::tokenize::Input;
use classifyd_fuzz::scratch_dir;
use libfuzzer_sys::fuzz_target;

/// One fixture per architecture family and variant (see tests/fixtures/).
const FIXTURES: &[&str] = &[
    "bert",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "electra",
    "modernbert",
    "deberta-v2",
    "deberta-v2-conv",
];

/// A scratch model directory per fixture: its weights and tokenizer linked in, the configs
/// written per run.
fn dirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let scratch = scratch_dir("model-dir");
        FIXTURES
            .iter()
            .map(|name| {
                let dir = scratch.join(name);
                std::fs::create_dir_all(&dir).expect("scratch model directory");
                for file in ["model.safetensors", "tokenizer.json"] {
                    let link = dir.join(file);
                    if !link.exists() {
                        std::os::unix::fs::symlink(fixtures.join(name).join(file), &link)
                            .expect("link a fixture file");
                    }
                }
                dir
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let [which, rest @ ..] = data else {
        return;
    };
    let dirs = dirs();
    let dir = &dirs[*which as usize % dirs.len()];
    let (config, tokenizer_config) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    std::fs::write(dir.join("config.json"), config).expect("write config.json");
    let tc = dir.join("tokenizer_config.json");
    match tokenizer_config {
        Some(bytes) => std::fs::write(&tc, bytes).expect("write tokenizer_config.json"),
        None => {
            let _ = std::fs::remove_file(&tc);
        }
    }
    let Ok(engine) = Engine::load(dir, DeviceChoice::Cpu, DTypeChoice::Auto) else {
        return;
    };
    let info = engine.info();
    assert!(info.max_length >= 1 || engine.tokenize(&Input::Ids(vec![0]), true).is_err());
    let long = "a long review that goes on and on ".repeat(40);
    let inputs = [
        Input::Text("what a wonderful film".into()),
        Input::Text(long.clone()),
        Input::Pair("a premise".into(), long),
        Input::Ids(vec![0, 1, 2]),
    ];
    for truncate in [true, false] {
        // An error is a fine answer for an odd config; a panic or a hang is not.
        if let Ok(results) = engine.classify(&inputs, truncate) {
            assert_eq!(results.len(), inputs.len());
            for p in results.into_iter().flatten() {
                assert_eq!(p.scores.len(), info.labels.len());
            }
        }
    }
});

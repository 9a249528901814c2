//! Every committed fuzz seed (fuzz/seeds/TARGET/) and every past crash kept as a regression
//! input (fuzz/regressions/TARGET/) replayed through the fuzz targets' bodies
//! (`classifyd::fuzzing`), so the targets compile against today's code and a fixed crash stays
//! fixed, in every `cargo test`.

use std::path::Path;

use classifyd::fuzzing::TARGETS;

#[test]
fn every_seed_and_past_crash_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let mut inputs = Vec::new();
        for folder in ["seeds", "regressions"] {
            let Ok(dir) = std::fs::read_dir(root.join(folder).join(name)) else {
                continue;
            };
            for e in dir {
                let p = e.unwrap().path();
                if p.is_file() && p.extension().is_none_or(|x| x != "md") {
                    inputs.push(p);
                }
            }
        }
        assert!(!inputs.is_empty(), "no seed for the {name} target");
        inputs.sort();
        for p in inputs {
            let data = std::fs::read(&p).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", p.display());
            replayed += 1;
        }
    }
    // Each target has seeds; the count only guards against an empty tree.
    assert!(replayed >= TARGETS.len());
}

/// The cargo-fuzz binaries are one-line wrappers: each names a body by the target's name, and
/// every body has a binary.
#[test]
fn every_fuzz_binary_wraps_its_body() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for (name, _) in TARGETS {
        let src = std::fs::read_to_string(root.join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(
            src.contains(&format!("classifyd::fuzzing::{name}(")),
            "fuzz/fuzz_targets/{name}.rs does not call classifyd::fuzzing::{name}"
        );
    }
    let binaries = std::fs::read_dir(&root).unwrap().count();
    assert_eq!(binaries, TARGETS.len());
}

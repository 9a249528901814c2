//! The F32 path every GPU build runs (candle's ops: its matmul and LayerNorm, the query
//! prescaled, bias adds unfolded), run on the CPU with `CLASSIFYD_F32_KERNELS=candle` against
//! transformers' golden logits on every fixture (issue #35). A test binary of its own: the switch
//! is read once per process, so it is set here before anything loads.

#[path = "common/mod.rs"]
mod common;
#[path = "engine/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use candle_core::DType;
use classifyd::engine::tokenize::Encoded;

use helpers::*;

const F32_TOL: f32 = 1e-4;

#[test]
fn candle_ops_f32_path_matches_transformers_on_every_fixture() {
    // SAFETY (of the environment write): the one test of this binary, before any thread of
    // ours reads the environment; the switch is read once, at the first load below.
    std::env::set_var("CLASSIFYD_F32_KERNELS", "candle");
    assert!(classifyd::model::kernels::candle_ops());
    let mut worst = 0f32;
    let mut fixtures = Vec::new();
    for entry in std::fs::read_dir(common::repo().join("tests/fixtures")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("golden.json").exists() && dir.join("config.json").exists() {
            fixtures.push(dir);
        }
    }
    fixtures.sort();
    for dir in &fixtures {
        let name = dir.file_name().unwrap().to_string_lossy();
        let golden = golden(dir);
        let token = golden["task"].as_str() == Some("token");
        let cases: Vec<_> = golden["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .filter(|c| c["refused"].as_bool() != Some(true))
            .collect();
        let engine = load(dir, DType::F32);
        assert_eq!(engine.info().kernels, "candle", "{name}");
        let encoded: Vec<Encoded> = cases
            .iter()
            .map(|c| engine.tokenize(&case_input(c), true).expect("tokenizes"))
            .collect();
        // The golden row of a case: its logits, or its tokens' logits one after another.
        let want = |c: &serde_json::Value| -> Vec<f32> {
            if token {
                c["token_logits"]
                    .as_array()
                    .expect("token_logits")
                    .iter()
                    .flat_map(f32s)
                    .collect()
            } else {
                f32s(&c["logits"])
            }
        };
        // One at a time, and one padded batch of every case (the GPU's shape of pass).
        for (c, e) in cases.iter().zip(&encoded) {
            let got = engine.logits_padded(&[e]).expect("forward").remove(0);
            let d = max_abs_diff(&got, &want(c));
            worst = worst.max(d);
            assert!(d <= F32_TOL, "{name}: {:?}: |Δ| {d}", c["text"]);
        }
        let refs: Vec<&Encoded> = encoded.iter().collect();
        let batched = engine.logits_padded(&refs).expect("batched forward");
        for (c, got) in cases.iter().zip(&batched) {
            let d = max_abs_diff(got, &want(c));
            worst = worst.max(d);
            assert!(d <= F32_TOL, "{name}: batched {:?}: |Δ| {d}", c["text"]);
        }
    }
    assert!(fixtures.len() >= 29, "{} fixtures", fixtures.len());
    println!(
        "candle ops, F32: worst |Δlogit| {worst:e} over {} fixtures",
        fixtures.len()
    );
}

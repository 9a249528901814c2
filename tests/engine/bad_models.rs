//! Every broken model directory ends in one error naming the file and the problem, never a
//! panic; checked through the library and through the binary's exit code and stderr.

use std::path::Path;
use std::process::Command;

use candle_core::DType;
use classifyd::engine::tokenize::Input;
use classifyd::engine::{DTypeChoice, DeviceChoice, Engine};
use serde_json::Value;

use crate::helpers::*;

fn load_error(dir: &Path) -> String {
    match Engine::load(dir, DeviceChoice::Cpu, DTypeChoice::Auto) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} does not mention {p:?}");
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_files_are_named() {
    for (file, what) in [
        ("config.json", "missing"),
        ("model.safetensors", "neither model.safetensors nor"),
        ("tokenizer.json", "missing (tokenizer)"),
    ] {
        let dir = scratch_copy("bert");
        std::fs::remove_file(dir.path().join(file)).unwrap();
        assert_mentions(&load_error(dir.path()), &[file, what]);
    }
    assert_mentions(
        &load_error(Path::new("/nonexistent/model")),
        &["/nonexistent/model", "missing"],
    );
}

#[test]
fn missing_shard_is_named() {
    let dir = scratch_copy("bert-multilabel");
    let shard = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
        .expect("a shard");
    std::fs::remove_file(dir.path().join(&shard)).unwrap();
    assert_mentions(&load_error(dir.path()), &[&shard, "weight shard"]);
}

#[test]
fn unknown_architecture_lists_supported_ones() {
    let dir = scratch_copy("bert");
    edit_json(&dir.path().join("config.json"), |c| {
        c["architectures"] = serde_json::json!(["GPT2ForSequenceClassification"]);
    });
    assert_mentions(
        &load_error(dir.path()),
        &[
            "config.json",
            "GPT2ForSequenceClassification",
            "BertForSequenceClassification",
        ],
    );
}

#[test]
fn shape_mismatch_names_tensor_and_file() {
    let dir = scratch_copy("bert");
    edit_json(&dir.path().join("config.json"), |c| {
        let i = c["intermediate_size"].as_u64().unwrap();
        c["intermediate_size"] = serde_json::json!(i + 8);
    });
    assert_mentions(
        &load_error(dir.path()),
        &["model.safetensors", "shape mismatch", "intermediate"],
    );
}

#[test]
fn truncated_and_corrupt_weights_are_refused() {
    let dir = scratch_copy("bert");
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let half = bytes.len() / 2;
    std::fs::write(&weights, &bytes[..half]).unwrap();
    // What happened, by how much, and what to do, in one line.
    assert_eq!(
        load_error(dir.path()),
        format!(
            "{}: invalid weights: truncated: its header describes {} bytes but the file has \
             {half} (an interrupted download or copy? fetch or copy it again)",
            weights.display(),
            bytes.len()
        )
    );

    let mut garbage = bytes.clone();
    garbage[8..64].fill(b'#');
    std::fs::write(&weights, &garbage).unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &["model.safetensors", "invalid weights"],
    );

    // A header claiming more than the file holds.
    let mut huge = bytes;
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&weights, &huge).unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &["model.safetensors", "invalid weights"],
    );
}

#[test]
fn a_token_type_past_the_model_s_table_is_refused_before_any_device_work() {
    // A tokenizer whose pair template gives the second text segment 2 (BERT has 2 segments).
    let dir = scratch_copy("bert");
    edit_json(&dir.path().join("tokenizer.json"), |t| {
        for part in t["post_processor"]["pair"].as_array_mut().unwrap() {
            for kind in ["Sequence", "SpecialToken"] {
                if part[kind]["type_id"] == serde_json::json!(1) {
                    part[kind]["type_id"] = serde_json::json!(2);
                }
            }
        }
    });
    let engine = load(dir.path(), DType::F32);
    let pair = Input::Pair("a premise".into(), "a hypothesis".into());
    let err = engine.tokenize(&pair, true).unwrap_err();
    assert_eq!(
        err.to_string(),
        "token type id 2 is outside the model's 2 token types"
    );
    // A single text uses type 0 only, and is classified.
    let got = engine
        .classify(&[Input::Text("a single text".into()), pair], true)
        .unwrap();
    assert!(got[0].is_ok());
    assert!(got[1].is_err());
}

#[test]
fn tokenizer_larger_than_embedding_table_is_refused() {
    let dir = scratch_copy("bert");
    let rows = {
        let c: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        c["vocab_size"].as_u64().unwrap()
    };
    edit_json(&dir.path().join("tokenizer.json"), |t| {
        t["model"]["vocab"]["zzzunseen"] = serde_json::json!(rows + 10);
    });
    assert_mentions(
        &load_error(dir.path()),
        &[
            "tokenizer.json",
            &format!("{} ids", rows + 11),
            &format!("only {rows} rows"),
        ],
    );
}

#[test]
fn non_utf8_and_broken_json_are_refused() {
    let dir = scratch_copy("bert");
    std::fs::write(
        dir.path().join("config.json"),
        b"{\"architectures\": [\"\xff\xfe\"]}",
    )
    .unwrap();
    assert_mentions(&load_error(dir.path()), &["config.json", "not UTF-8"]);

    std::fs::write(dir.path().join("config.json"), b"{\"architectures\": ").unwrap();
    assert_mentions(&load_error(dir.path()), &["config.json", "not valid JSON"]);

    let dir = scratch_copy("bert");
    std::fs::write(dir.path().join("tokenizer.json"), b"\xff\xff\xff").unwrap();
    assert_mentions(&load_error(dir.path()), &["tokenizer.json", "not UTF-8"]);

    let dir = scratch_copy("bert");
    std::fs::write(dir.path().join("tokenizer.json"), b"{\"version\": \"1.0\"}").unwrap();
    assert_mentions(
        &load_error(dir.path()),
        &["tokenizer.json", "invalid tokenizer"],
    );
}

#[test]
fn bad_labels_are_refused() {
    let dir = scratch_copy("bert");
    edit_json(&dir.path().join("config.json"), |c| {
        c["id2label"] = serde_json::json!({"0": "a", "2": "c"});
    });
    assert_mentions(&load_error(dir.path()), &["config.json", "id2label"]);
}

#[test]
fn labels_default_and_integer_values_work() {
    let dir = scratch_copy("bert");
    edit_json(&dir.path().join("config.json"), |c| {
        let o = c.as_object_mut().unwrap();
        o.remove("id2label");
        o.remove("label2id");
        o.insert("num_labels".into(), serde_json::json!(3));
    });
    let e = Engine::load(dir.path(), DeviceChoice::Cpu, DTypeChoice::Auto).unwrap();
    assert_eq!(e.info().labels, ["LABEL_0", "LABEL_1", "LABEL_2"]);

    edit_json(&dir.path().join("config.json"), |c| {
        c["id2label"] = serde_json::json!({"low": 0, "mid": 1, "high": 2});
    });
    let e = Engine::load(dir.path(), DeviceChoice::Cpu, DTypeChoice::Auto).unwrap();
    assert_eq!(e.info().labels, ["low", "mid", "high"]);
}

#[test]
fn binary_prints_one_error_line_and_exits_nonzero() {
    let dir = scratch_copy("bert");
    edit_json(&dir.path().join("config.json"), |c| {
        c["hidden_size"] = serde_json::json!(64);
    });
    let truncated = scratch_copy("bert");
    let weights = truncated.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..100]).unwrap();
    for (dir, expect) in [
        (dir.path(), "shape mismatch"),
        (truncated.path(), "model.safetensors"),
    ] {
        // candle appends a backtrace to its errors when this is set; the line must stay one line.
        let out = Command::new(env!("CARGO_BIN_EXE_classifyd"))
            .env("RUST_BACKTRACE", "1")
            .args(["classify", "--model"])
            .arg(dir)
            .arg("hello")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "stderr: {stderr}");
        assert!(
            stderr.contains(expect) && !stderr.contains("panicked"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_decoder_without_pad_token_id_or_with_an_unknown_rope_is_refused_naming_the_field() {
    let dir = scratch_copy("qwen3");
    edit_json(&dir.path().join("config.json"), |v| {
        v.as_object_mut().unwrap().remove("pad_token_id");
    });
    assert_mentions(
        &load_error(dir.path()),
        &["config.json", "pad_token_id is missing"],
    );

    let dir = scratch_copy("llama");
    edit_json(&dir.path().join("config.json"), |v| {
        v["rope_parameters"]["rope_type"] = "longrope".into();
    });
    assert_mentions(
        &load_error(dir.path()),
        &["rope_type \"longrope\"", "not supported"],
    );

    let dir = scratch_copy("mistral");
    edit_json(&dir.path().join("config.json"), |v| {
        v["num_key_value_heads"] = 3.into();
    });
    assert_mentions(&load_error(dir.path()), &["num_key_value_heads 3"]);

    // Absurd sizes are refused before anything is allocated for them.
    let dir = scratch_copy("qwen3");
    edit_json(&dir.path().join("config.json"), |v| {
        v["num_hidden_layers"] = serde_json::json!(1u64 << 60);
        v.as_object_mut().unwrap().remove("layer_types");
    });
    assert_mentions(&load_error(dir.path()), &["num_hidden_layers", "more than"]);
    let dir = scratch_copy("qwen3");
    edit_json(&dir.path().join("config.json"), |v| {
        v["head_dim"] = serde_json::json!(1u64 << 40);
    });
    assert_mentions(&load_error(dir.path()), &["head_dim", "more than"]);

    let dir = scratch_copy("qwen3");
    edit_json(&dir.path().join("config.json"), |v| {
        v["num_labels"] = 5.into();
    });
    assert_mentions(
        &load_error(dir.path()),
        &["num_labels is 5", "id2label has 3"],
    );
}

#[test]
fn a_text_of_no_tokens_is_refused_by_a_tokenizer_that_adds_none() {
    let engine = Engine::load(&fixture("qwen3"), DeviceChoice::Cpu, DTypeChoice::Auto).unwrap();
    let refused = engine.tokenize(&Input::Text(String::new()), true);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("no tokens")),
        "{:?}",
        refused.map(|e| e.ids)
    );
    // A BOS-adding tokenizer gives "" one token, and it is classified.
    let llama = Engine::load(&fixture("llama"), DeviceChoice::Cpu, DTypeChoice::Auto).unwrap();
    assert_eq!(
        llama
            .tokenize(&Input::Text(String::new()), true)
            .unwrap()
            .len(),
        1
    );
}

/// A config.json asking for a billion positions is a load error naming the key, for the two
/// families that build position tables from config.json alone (ModernBERT's rotary tables,
/// DeBERTa's relative-position indices): nothing is allocated for it, so the binary exits 1
/// with one line even under an address-space limit far below what such tables would take.
#[test]
fn a_billion_positions_is_a_config_error_not_an_abort() {
    for fixture in ["modernbert", "deberta-v2"] {
        let dir = scratch_copy(fixture);
        edit_json(&dir.path().join("config.json"), |c| {
            c["max_position_embeddings"] = serde_json::json!(1_000_000_000u64);
        });
        assert_mentions(
            &load_error(dir.path()),
            &["config.json", "max_position_embeddings 1000000000"],
        );
        // 2 GiB of address space: enough to start, far from a billion positions' tables.
        let out = Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 2097152 && exec \"$0\" classify --model \"$1\" hello")
            .arg(env!("CARGO_BIN_EXE_classifyd"))
            .arg(dir.path())
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{fixture}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{fixture}: {stderr}");
        assert!(stderr.contains("max_position_embeddings"), "{stderr}");
    }
}

/// With relative attention, DeBERTa serves at most `MAX_RELATIVE_POSITIONS` tokens (its gather
/// indices are `T × T`), whatever larger table its config names; `inspect` says so.
#[test]
fn deberta_relative_positions_are_capped_at_what_is_built() {
    let dir = scratch_copy("deberta-v2");
    edit_json(&dir.path().join("config.json"), |c| {
        c["max_position_embeddings"] = serde_json::json!(60_000);
    });
    edit_json(&dir.path().join("tokenizer_config.json"), |c| {
        c["model_max_length"] = serde_json::json!(100_000);
    });
    let engine = Engine::load(dir.path(), DeviceChoice::Cpu, DTypeChoice::Auto).unwrap();
    assert_eq!(
        engine.info().max_length,
        classifyd::model::families::deberta::MAX_RELATIVE_POSITIONS
    );
}

/// The two model-directory mistakes people make first, each with what to do.
#[test]
fn a_file_for_a_directory_and_pickle_weights_say_what_to_do() {
    let pickle = scratch_copy("bert");
    std::fs::rename(
        pickle.path().join("model.safetensors"),
        pickle.path().join("pytorch_model.bin"),
    )
    .unwrap();
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    for (dir, expect) in [
        (
            readme.as_path(),
            format!(
                "classifyd: error: {}: not a directory: a model is the directory that holds \
                 config.json, model.safetensors and tokenizer.json",
                readme.display()
            ),
        ),
        (
            pickle.path(),
            format!(
                "classifyd: error: {}: only PyTorch pickle weights (pytorch_model.bin); classifyd \
                 reads safetensors: save the model with transformers' `save_pretrained(dir)` \
                 (safetensors by default), or convert it with `safetensors.torch.save_file`",
                pickle.path().display()
            ),
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_classifyd"))
            .args(["classify", "--model"])
            .arg(dir)
            .arg("hello")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), expect);
    }
}

//! The fuzz targets' bodies, one function each, for everything classifyd parses from outside.
//!
//! Why in the crate: the cargo-fuzz binaries in `fuzz/` are one-line wrappers around these, so
//! they compile against the crate's real paths, and `cargo test` (tests/fuzz_seeds.rs) replays
//! every committed seed and every past crash through the very same code. A target that no longer
//! compiles, or a seed that panics, fails the ordinary test run instead of rotting unseen.
//! Behind the `fuzzing` feature, which only the fuzz crate and the tests turn on.
//!
//! Each function panics (an assertion) where a promise to the peer is broken; an error is a
//! fine answer for an odd input, a panic or a hang is not.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::BytesMut;
use candle_core::{DType, Device};
use clap::Parser;
use prost::Message;
use serde::Deserialize;
use tokio_util::codec::Decoder;

use crate::cli::{Cli, Command};
use crate::engine::loader::{self, HeadConfig, ModelDir, ProblemType};
use crate::engine::tokenize::Input;
use crate::engine::{DTypeChoice, DeviceChoice, Engine};
use crate::model::families::{
    bert::EncoderConfig, deberta, distilbert::DistilBertConfig, modernbert,
};
use crate::service::convert;
use crate::settings::FileValues;
use crate::wire::frame::{self, FrameError};
use crate::wire::protocol::{self, pb, RequestLimits};

/// A target's body: one input, a panic where a promise is broken.
pub type Target = fn(&[u8]);

/// Every target by the name its cargo-fuzz binary and its seed folder have.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("request", request),
    ("config_json", config_json),
    ("tokenizer_config_json", tokenizer_config_json),
    ("model_dir", model_dir),
    ("safetensors", safetensors),
    ("toml_config", toml_config),
];

/// The serve defaults' request limits (`serve::config`'s), and small ones that inputs reach.
fn limits() -> [RequestLimits; 2] {
    [
        RequestLimits {
            max_inputs: 64,
            max_text_bytes: 64 * 1024,
        },
        RequestLimits {
            max_inputs: 2,
            max_text_bytes: 8,
        },
    ]
}

/// One frame's payload (a protobuf `Request`) through decoding and validation.
pub fn request(data: &[u8]) {
    for l in limits() {
        check_request(data, &l);
    }
}

/// A byte stream from a peer through the frame codec, in arbitrary read sizes, as a Unix
/// connection reads it; every frame it yields goes through request decoding and validation.
/// Input: 2 bytes of frame limit, 1 byte of read size, the stream.
pub fn frame(data: &[u8]) {
    let [a, b, c, stream @ ..] = data else {
        return;
    };
    let max = u16::from_be_bytes([*a, *b]) as usize;
    let read_size = *c as usize % 97 + 1;
    let limits = RequestLimits {
        max_inputs: 4,
        max_text_bytes: 64,
    };
    let mut codec = frame::codec(max);
    let mut buf = BytesMut::new();
    let on_frame = |payload: &[u8]| {
        assert!(
            payload.len() <= max,
            "frame of {} over {max}",
            payload.len()
        );
        check_request(payload, &limits);
        // What a client does with a server's frame.
        let _ = pb::Response::decode(payload);
    };
    for piece in stream.chunks(read_size) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(payload)) => on_frame(&payload),
                Ok(None) => break,
                Err(e) => {
                    // Mid-stream, the codec's only error is an oversized prefix: the server
                    // answers it and closes.
                    let e = frame::classify_io_error(e, max, None);
                    assert!(matches!(e, FrameError::TooLong { .. }), "{e}");
                    return;
                }
            }
        }
    }
    // The peer closes: what is left must be a typed truncation, never a frame or a panic.
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(payload)) => on_frame(&payload),
            Ok(None) => break,
            Err(e) => {
                let e = frame::classify_io_error(e, max, None);
                assert!(
                    matches!(e, FrameError::Truncated | FrameError::TooLong { .. }),
                    "{e}"
                );
                break;
            }
        }
    }
}

/// Runs one frame's payload through what the server does with it before any model work
/// (decode, check the version, turn the inputs into engine inputs) and checks the promises made
/// to the peer: a refusal is INVALID_ARGUMENT with a reason, accepted inputs respect the limits,
/// and an accepted request survives a re-encoding unchanged.
pub fn check_request(payload: &[u8], limits: &RequestLimits) {
    let request = match protocol::decode_request(payload) {
        Ok(r) => r,
        Err(refusal) => {
            assert_eq!(refusal.status, pb::Status::InvalidArgument);
            assert!(!refusal.message.is_empty());
            // The refusal itself must be encodable as the answer.
            let _ = protocol::status_response(refusal.id, refusal.status, refusal.message);
            return;
        }
    };
    assert_eq!(request.version, protocol::VERSION);
    let again = pb::Request::decode(request.encode_to_vec().as_slice())
        .expect("a decoded request re-encodes to a decodable one");
    assert_eq!(again, request, "request changed in a re-encoding");
    if let Some(pb::request::Body::Classify(c)) = &request.body {
        if let Ok(inputs) = convert::inputs(c, limits) {
            assert!(!inputs.is_empty() && inputs.len() <= limits.max_inputs);
            for input in &inputs {
                let size = match input {
                    Input::Text(t) => t.len(),
                    Input::Pair(a, b) => a.len() + b.len(),
                    Input::Ids(ids) => ids.len(),
                };
                assert!(size <= limits.max_text_bytes);
            }
        }
        // Whatever the options, a sequence model's admission answers with a reason or not
        // at all; a token model's options parse or are refused with one.
        let options = c.options.clone().unwrap_or_default();
        if let Err(why) = convert::no_token_options(&options) {
            assert!(!why.is_empty());
        }
        if let Err(why) = convert::token_options(&options) {
            assert!(!why.is_empty());
        }
    }
}

/// config.json as the loader reads it (the head: architecture, labels, problem type), then
/// every encoder family's own config deserialized from it and checked, as the registry's
/// builders do. All families are tried on every input so that one input reaches each check.
pub fn config_json(data: &[u8]) {
    let Ok((config, head)) = loader::parse_config_json(Path::new("config.json"), data) else {
        return;
    };
    assert!(!head.labels.is_empty());
    if let Ok(c) = EncoderConfig::deserialize(&config) {
        if c.check().is_ok() {
            let _ = c.embedding_width();
        }
    }
    if let Ok(c) = DistilBertConfig::deserialize(&config) {
        let _ = c.check();
    }
    if let Ok(c) = modernbert::Config::deserialize(&config) {
        if c.check().is_ok() {
            let _ = (c.head_dim(), c.local_window(), c.sliding_layers());
        }
    }
    if let Ok(c) = deberta::Config::deserialize(&config) {
        let _ = c.check();
    }
}

/// tokenizer_config.json as the loader reads it: only `model_max_length` is used.
pub fn tokenizer_config_json(data: &[u8]) {
    if let Ok(Some(n)) = loader::parse_tokenizer_config(Path::new("tokenizer_config.json"), data) {
        // transformers' "no limit" (1e30) and nonsense are dropped, not turned into a length.
        assert!((1..1_000_000_000).contains(&n), "{n}");
    }
}

/// One fixture per encoder family and variant (tests/fixtures/).
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
fn model_dirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
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

/// A whole model directory load with a fuzzed config.json (and, optionally, a fuzzed
/// tokenizer_config.json) over one of the committed fixtures' real weights and tokenizer, then
/// one batch classified: a config the loader accepts must not panic, blow up memory or hang
/// later in the forward pass. Input: 1 byte choosing the fixture, config.json, then optionally
/// a NUL byte (never valid inside JSON) and tokenizer_config.json.
pub fn model_dir(data: &[u8]) {
    let [which, rest @ ..] = data else {
        return;
    };
    let dirs = model_dirs();
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
        if let Ok(results) = engine.classify(&inputs, truncate) {
            assert_eq!(results.len(), inputs.len());
            for p in results.into_iter().flatten() {
                assert_eq!(p.scores.len(), info.labels.len());
            }
        }
    }
}

/// A model.safetensors file as the loader maps it (candle's `MmapedSafetensors`: the
/// `safetensors` crate's header parsing and offset checks), then the parameter summary and
/// every tensor read and converted to the compute dtype, as the model code's builder does.
pub fn safetensors(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let root = DIR.get_or_init(|| scratch_dir("safetensors"));
    let weights = root.join("model.safetensors");
    std::fs::write(&weights, data).expect("write model.safetensors");
    let model_dir = ModelDir {
        root: root.clone(),
        config_path: root.join("config.json"),
        config: serde_json::Value::Null,
        head: HeadConfig {
            architecture: crate::model::families::bert::FAMILY.architectures[0].into(),
            labels: vec!["LABEL_0".into(), "LABEL_1".into()],
            problem_type: ProblemType::SingleLabel,
            pad_token_id: None,
        },
        weight_files: vec![weights],
        tokenizer_path: root.join("tokenizer.json"),
        model_max_length: None,
        unk_token: None,
    };
    let Ok(st) = model_dir.map_weights() else {
        return;
    };
    let _ = loader::weight_summary(&st);
    for (name, _) in st.tensors() {
        if let Ok(t) = st.load(&name, &Device::Cpu) {
            let _ = t.to_dtype(DType::F32);
        }
    }
}

/// The `serve --config` TOML file: parsed alone (its errors must stay one line), then read from
/// disk and checked as `classifyd check-config --config FILE` does (the settings merged,
/// validated and turned into what `serve` runs with), whose answer is one line or a report.
pub fn toml_config(data: &[u8]) {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = FileValues::parse(text) {
        assert!(!e.contains('\n'), "multi-line error: {e}");
        return;
    }
    let path = FILE.get_or_init(|| scratch_dir("toml").join("classifyd.toml"));
    std::fs::write(path, data).expect("write the config file");
    let cli = Cli::try_parse_from([
        "classifyd".as_ref(),
        "check-config".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ])
    .expect("check-config --config FILE parses");
    let Command::CheckConfig(args) = cli.command else {
        panic!("check-config parsed as another command");
    };
    match crate::cli::serve::check_config(&args) {
        Ok(report) => assert!(report.starts_with("ok"), "{report}"),
        Err(e) => assert!(!format!("{e:#}").contains('\n'), "multi-line error: {e:#}"),
    }
}

/// A directory of this process's own in /dev/shm (memory, so writing the input to a file each
/// run costs no disk I/O), falling back to the system temp directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("classifyd-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

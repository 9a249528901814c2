//! tokenizer_config.json as the loader reads it: only `model_max_length` is used.
#![no_main]

use std::path::Path;

use classifyd::loader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(n)) = loader::parse_tokenizer_config(Path::new("tokenizer_config.json"), data) {
        // transformers' "no limit" (1e30) and nonsense are dropped, not turned into a length.
        assert!((1..1_000_000_000).contains(&n), "{n}");
    }
});

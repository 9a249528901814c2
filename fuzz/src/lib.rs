//! What the fuzz targets share: the checks on a decoded request, and a scratch directory for
//! the targets whose code under test reads files.

use std::path::PathBuf;

use classifyd::service::convert;
use classifyd::wire::protocol::{self, pb, RequestLimits};
use prost::Message;

/// Runs one frame's payload through what the server does with it before any model work
/// (`Service::handle`: decode, check the version, turn the inputs into engine inputs) and
/// checks the promises made to the peer: a refusal is INVALID_ARGUMENT with a reason, accepted
/// inputs respect the limits, and an accepted request survives a re-encoding unchanged.
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
                    classifyd::engine::tokenize::Input::Text(t) => t.len(),
                    classifyd::engine::tokenize::Input::Pair(a, b) => a.len() + b.len(),
                    classifyd::engine::tokenize::Input::Ids(ids) => ids.len(),
                };
                assert!(size <= limits.max_text_bytes);
            }
        }
    }
}

/// A directory of this process's own in /dev/shm (memory, so writing the input to a file each
/// run costs no disk I/O), falling back to the system temp directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("classifyd-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

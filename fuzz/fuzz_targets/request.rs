//! One frame's payload (a protobuf `Request`) through decoding and validation, under the
//! default limits and under small ones.
#![no_main]

use classifyd::wire::protocol::RequestLimits;
use classifyd_fuzz::check_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_request(data, &RequestLimits::default());
    check_request(
        data,
        &RequestLimits {
            max_inputs: 2,
            max_text_bytes: 8,
        },
    );
});

//! Fuzz target: arbitrary bytes into the frame decoder (whole and in pieces) and every decoded
//! frame's payload into every validator its kind can reach. Must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hm_ipc_fuzz::decode_and_validate(data);
    // The first byte picks how reads are split; splitting must not change what decodes.
    let first = usize::from(data.first().copied().unwrap_or(1));
    hm_ipc_fuzz::assert_split_invariant(data, &[first, 7, 1, 24]);
});

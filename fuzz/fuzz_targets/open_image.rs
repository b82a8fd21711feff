//! Fuzz the qcow2 safe open and everything reachable after it (reads,
//! allocation map, flatten, check, a small write) with arbitrary file bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    boxlite_backend_qcow2::image::fuzzing::exercise_bytes(data);
});

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetlake::fuzzing::json_rows(data));

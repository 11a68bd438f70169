#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetlake::fuzzing::wal_segment(data));

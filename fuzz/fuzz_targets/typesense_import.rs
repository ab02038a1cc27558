#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::typesense_import(data));

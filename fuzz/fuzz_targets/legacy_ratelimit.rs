#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stormwall_fuzz::legacy_ratelimit(data));

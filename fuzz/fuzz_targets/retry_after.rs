#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stormwall_fuzz::retry_after(data));

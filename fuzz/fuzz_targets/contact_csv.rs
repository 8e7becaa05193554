#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentline::fuzz::contact_csv(data));

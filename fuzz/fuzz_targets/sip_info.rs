#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentline::fuzz::sip_info(data));

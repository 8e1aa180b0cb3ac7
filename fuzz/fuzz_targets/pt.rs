//! Any bytes given to the `.pt` reader must come back as Ok or Err: no panic, no unbounded
//! allocation (libFuzzer's -rss_limit_mb catches those).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = saerl::sae::pt::parse(data.to_vec());
});

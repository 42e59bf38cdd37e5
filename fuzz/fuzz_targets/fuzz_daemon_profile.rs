//! Feeds arbitrary bytes to the daemon profile decoder (`DaemonProfile::from_bytes`:
//! the `daemon/*.json` files of the state directory, read by the daemon and by
//! `homeostat run` to seed profiles). It must return Ok or Err, never panic; a profile
//! that loads must reload from its own bytes unchanged, and convert to a `homeostat
//! run` profile and back without panicking.
#![no_main]

use homeostat_core::ph::{PhConfig, PhProfile};
use homeostat_monitor::daemon_profile::DaemonProfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = DaemonProfile::from_bytes(data) else {
        return;
    };
    let again = DaemonProfile::from_bytes(&d.to_bytes()).expect("a loaded profile reloads");
    assert_eq!(again, d);
    let _ = d.pair_count();
    if let Some(p) = d.to_ph(&PhConfig::default()) {
        let _ = DaemonProfile::from_ph(&p);
        PhProfile::from_bytes(&p.to_bytes()).expect("a converted profile reloads");
    }
});

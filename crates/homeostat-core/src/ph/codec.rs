//! A pH profile as bytes: the versioned, checksummed file of `homeostat run`, and the
//! raw-pair form the daemon's kernel side learns and loads.
//!
//! Frame versions: 1 is the pairs, state and counters ([`StoredPhProfile`]); 2 is
//! version 1's payload followed by [`PhExtras`]: the symbol table of an
//! argument-aware profile and the rates learned for the rate limits. A profile with
//! neither is still written as version 1, so older builds keep reading plain
//! profiles, and refuse the others (whose symbols they would misread as calls). A
//! version 1 profile loads with plain calls and no rates learned (no limit). Version 3
//! is version 2 followed by [`PhFile`], the birth time of the profile's executable; it
//! is written only when that time is known, so files of older builds stay readable
//! by them unless there is something they would get wrong without it.

use serde::{Deserialize, Serialize};

use super::{ExeKey, PhConfig, PhProfile, ProfileState};
use crate::model::{Model, ModelKind, ModelSpec};
use crate::pairs::Pairs;
use crate::profile::{frame_version, unframe_versions, ProfileError};
use crate::rate::{LearnedRates, RateState};
use crate::symbols::SymbolTable;

/// Frame version of a plain pH profile.
pub const PH_VERSION: u16 = 1;
/// Frame version of a pH profile with a symbol table or learned rates.
pub const PH_VERSION_EXTRAS: u16 = 2;
/// Frame version of a pH profile that knows its executable's birth time.
pub const PH_VERSION_FILE: u16 = 3;

impl PhProfile {
    /// A profile made from pairs over raw call numbers (`(cur, prev, mask)`, bit d-1 of
    /// `mask` = prev came d calls before cur), e.g. learnt by the daemon's kernel side:
    /// its training and testing data are both these pairs. `None` if a mask has bits
    /// beyond the configured window or there are more than 4095 distinct calls.
    pub fn from_raw_pairs(
        key: ExeKey,
        path: impl Into<String>,
        config: &PhConfig,
        state: ProfileState,
        pairs: &[(u32, u32, u32)],
    ) -> Option<Self> {
        let mut symbols: Vec<u32> = pairs.iter().flat_map(|&(c, p, _)| [c, p]).collect();
        symbols.sort_unstable();
        symbols.dedup();
        if symbols.len() > 4095 {
            return None;
        }
        let id = |raw: u32| symbols.binary_search(&raw).map(|i| i as u16 + 1).ok();
        let entries: Vec<(u16, u16, u32)> = pairs
            .iter()
            .filter(|&&(_, _, m)| m != 0)
            .map(|&(c, p, m)| Some((id(c)?, id(p)?, m)))
            .collect::<Option<_>>()?;
        let model = Pairs::from_parts(config.spec(), &symbols, &entries, 0)?;
        Some(PhProfile {
            key,
            path: path.into(),
            state,
            model,
            train_count: 0,
            last_mod_count: 0,
            normal_time_ns: 0,
            anomalies: 0,
            dirty: true,
            symbols: None,
            rates: None,
            rate_state: RateState::default(),
            born: None,
        })
    }

    /// The pairs the profile acts on, over raw call numbers (`(cur, prev, mask)`): the
    /// testing data once normal, else the training data. An argument-aware profile's
    /// (call, class) symbols fold back to their calls (masks of folded pairs united),
    /// so the daemon, which sees call numbers only, gets the plain view of what was
    /// learned; pairs with a class never learned are dropped.
    pub fn raw_pairs(&self) -> Vec<(u32, u32, u32)> {
        let entries = if self.state == ProfileState::Normal {
            self.model.test_entries()
        } else {
            self.model.entries()
        };
        let a = self.model.alphabet();
        let call = |s: u32| -> Option<u32> {
            match &self.symbols {
                Some(t) => t.call_of(s),
                None => Some(s),
            }
        };
        let raw = entries
            .into_iter()
            .filter_map(|(c, p, m)| Some((call(a.raw(c)?)?, call(a.raw(p)?)?, m)));
        if self.symbols.is_none() {
            return raw.collect();
        }
        let mut folded: std::collections::BTreeMap<(u32, u32), u32> = Default::default();
        for (c, p, m) in raw {
            *folded.entry((c, p)).or_default() |= m;
        }
        folded.into_iter().map(|((c, p), m)| (c, p, m)).collect()
    }

    /// The call numbers the profile has seen, sorted: its alphabet, with an
    /// argument-aware profile's (call, class) symbols folded back to their calls (for
    /// a seccomp allow-list, which knows calls only).
    pub fn calls(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .model
            .alphabet()
            .symbols()
            .iter()
            .filter_map(|&s| match &self.symbols {
                Some(t) => t.call_of(s),
                None => Some(s),
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The profile as file contents (versioned, checksummed; write atomically).
    pub fn to_bytes(&self) -> Vec<u8> {
        let stored = StoredPhProfile {
            key: self.key,
            path: self.path.clone(),
            state: self.state,
            spec: self.model.spec().clone(),
            symbols: self.model.alphabet().symbols().to_vec(),
            train_count: self.train_count,
            last_mod_count: self.last_mod_count,
            normal_time_ns: self.normal_time_ns,
            anomalies: self.anomalies,
            calls: self.model.trained_calls(),
            train: self.model.entries(),
            test: self.model.test_entries(),
        };
        let mut payload =
            postcard::to_allocvec(&stored).expect("serialising plain data into a Vec cannot fail");
        if self.symbols.is_none() && self.rates.is_none() && self.born.is_none() {
            return frame_version(PH_MAGIC, PH_VERSION, &payload);
        }
        let extras = PhExtras {
            symbols: self.symbols.clone(),
            rates: self.rates,
        };
        payload.extend(
            postcard::to_allocvec(&extras).expect("serialising plain data into a Vec cannot fail"),
        );
        let Some(born) = self.born else {
            return frame_version(PH_MAGIC, PH_VERSION_EXTRAS, &payload);
        };
        payload.extend(
            postcard::to_allocvec(&PhFile { born: Some(born) })
                .expect("serialising plain data into a Vec cannot fail"),
        );
        frame_version(PH_MAGIC, PH_VERSION_FILE, &payload)
    }

    /// Parses and validates file contents.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProfileError> {
        let (version, payload) = unframe_versions(
            PH_MAGIC,
            bytes,
            &[PH_VERSION, PH_VERSION_EXTRAS, PH_VERSION_FILE],
        )?;
        let (s, mut rest): (StoredPhProfile, &[u8]) = postcard::take_from_bytes(payload)
            .map_err(|e| ProfileError::Corrupt(format!("payload does not decode: {e}")))?;
        let mut extras = PhExtras::default();
        if version >= PH_VERSION_EXTRAS {
            (extras, rest) = postcard::take_from_bytes(rest)
                .map_err(|e| ProfileError::Corrupt(format!("extras do not decode: {e}")))?;
        }
        let mut file = PhFile::default();
        if version >= PH_VERSION_FILE {
            (file, rest) = postcard::take_from_bytes(rest).map_err(|e| {
                ProfileError::Corrupt(format!("executable's birth time does not decode: {e}"))
            })?;
        }
        let symbols = extras
            .symbols
            .map(SymbolTable::validated)
            .transpose()
            .map_err(|e| ProfileError::Corrupt(format!("symbol table: {e}")))?;
        if let Some(r) = &extras.rates {
            r.validate().map_err(ProfileError::Corrupt)?;
        }
        if !rest.is_empty() {
            return Err(ProfileError::TrailingData(rest.len() as u64));
        }
        s.spec
            .validate()
            .map_err(|e| ProfileError::Corrupt(e.to_string()))?;
        if s.spec.kind != ModelKind::Pairs || s.symbols.len() > 4096 {
            return Err(ProfileError::Corrupt(
                "not a lookahead-pairs profile".into(),
            ));
        }
        let bad = || ProfileError::Corrupt("invalid pair entry".into());
        let mut model = Pairs::from_parts(s.spec, &s.symbols, &s.train, s.calls).ok_or_else(bad)?;
        model.restore_test(&s.test).ok_or_else(bad)?;
        Ok(PhProfile {
            key: s.key,
            path: s.path,
            state: s.state,
            model,
            train_count: s.train_count,
            last_mod_count: s.last_mod_count.min(s.train_count),
            normal_time_ns: s.normal_time_ns,
            anomalies: s.anomalies,
            dirty: false,
            symbols,
            rates: extras.rates,
            rate_state: RateState::default(),
            born: file.born,
        })
    }
}

/// First bytes of a pH profile file.
pub const PH_MAGIC: &[u8; 8] = b"HMSTPHPF";

#[derive(Debug, Serialize, Deserialize)]
struct StoredPhProfile {
    key: ExeKey,
    path: String,
    state: ProfileState,
    spec: ModelSpec,
    symbols: Vec<u32>,
    train_count: u64,
    last_mod_count: u64,
    normal_time_ns: u64,
    anomalies: u64,
    calls: u64,
    train: Vec<(u16, u16, u32)>,
    test: Vec<(u16, u16, u32)>,
}

/// What version 2 adds after version 1's payload.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PhExtras {
    symbols: Option<SymbolTable>,
    rates: Option<LearnedRates>,
}

/// What version 3 adds after version 2's payload.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PhFile {
    /// [`PhProfile::born`].
    born: Option<u64>,
}

#[cfg(test)]
mod raw_pair_tests {
    use super::*;

    #[test]
    fn raw_pairs_round_trip_and_test_like_the_original() {
        let config = PhConfig::default();
        let key = ExeKey { dev: 1, ino: 2 };
        let pairs = vec![(3, 5, 0b1), (3, 7, 0b10), (9, 3, 0b101)];
        let p =
            PhProfile::from_raw_pairs(key, "/x", &config, ProfileState::Normal, &pairs).unwrap();
        let mut got = p.raw_pairs();
        got.sort_unstable();
        assert_eq!(got, pairs);
        assert_eq!(p.pairs(), 4);
        // A mask beyond the window (9: distances 1..=8) is refused.
        assert!(PhProfile::from_raw_pairs(
            key,
            "/x",
            &config,
            ProfileState::Training,
            &[(1, 2, 1 << 8)]
        )
        .is_none());
    }

    #[test]
    fn damaged_version_2_payloads_are_errors_not_panics() {
        use crate::symbols::{Arg, SymbolMode};
        let config = PhConfig {
            symbols: SymbolMode::Args,
            rate_limit: true,
            ..PhConfig::default()
        };
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/x", &config);
        let mut task = crate::ph::PhTask::new(&p);
        let arg = Arg::Path {
            path: b"/srv/a/b".to_vec(),
            flags: 0,
        };
        for call in [257, 0, 3, 257, 0, 3] {
            let s = p.symbol_of(&task, call, Some(&arg));
            p.on_syscall(&mut task, s, false, 0, &config, &mut |_| {});
        }
        p.on_rate(&task, crate::rate::RateKind::Fork, 0, &config, &mut |_| {});
        let good = p.to_bytes();
        let back = PhProfile::from_bytes(&good).unwrap();
        assert_eq!(back.symbol_table(), p.symbol_table());
        assert_eq!(back.learned_rates().unwrap().fork_peak, 1);
        // Every byte of the payload flipped, the checksum redone: Ok or Err, no panic.
        let payload = &good[24..];
        for i in 0..payload.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut d = payload.to_vec();
                d[i] ^= flip;
                let _ = PhProfile::from_bytes(&frame_version(PH_MAGIC, PH_VERSION_EXTRAS, &d));
            }
        }
        // Pseudo-random payloads.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300 {
            let d: Vec<u8> = (0..len)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 56) as u8
                })
                .collect();
            let _ = PhProfile::from_bytes(&frame_version(PH_MAGIC, PH_VERSION_EXTRAS, &d));
            let _ = PhProfile::from_bytes(&frame_version(PH_MAGIC, PH_VERSION_FILE, &d));
        }
        // A version this build does not know is refused.
        assert!(PhProfile::from_bytes(&frame_version(PH_MAGIC, 4, payload)).is_err());
    }

    #[test]
    fn a_known_birth_time_is_version_3_and_round_trips() {
        let config = PhConfig::default();
        let key = ExeKey { dev: 1, ino: 2 };
        let p = PhProfile::new(key, "/x", &config).with_born(Some(1_700_000_000_123_456_789));
        let bytes = p.to_bytes();
        assert_eq!(&bytes[8..10], &PH_VERSION_FILE.to_le_bytes());
        let back = PhProfile::from_bytes(&bytes).unwrap();
        assert_eq!(back.born(), Some(1_700_000_000_123_456_789));
        // Without a birth time the frame stays what older builds read.
        let plain = PhProfile::new(key, "/x", &config);
        assert_eq!(&plain.to_bytes()[8..10], &PH_VERSION.to_le_bytes());
        assert_eq!(
            PhProfile::from_bytes(&plain.to_bytes()).unwrap().born(),
            None
        );
        // Version 3's section cut short is an error, not a profile without it.
        let payload = &bytes[24..];
        let cut = &payload[..payload.len() - 1];
        assert!(PhProfile::from_bytes(&frame_version(PH_MAGIC, PH_VERSION_FILE, cut)).is_err());
    }

    #[test]
    fn learned_rates_outside_what_training_can_make_are_refused() {
        use crate::rate::{LearnedRates, MAX_COUNT, MAX_WINDOW_NS, MIN_WINDOW_NS};
        let config = PhConfig {
            rate_limit: true,
            ..PhConfig::default()
        };
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/x", &config);
        let with = |p: &mut PhProfile, window_ns, fork_peak| {
            p.rates = Some(LearnedRates {
                window_ns,
                fork_peak,
                create_peak: 0,
            });
            PhProfile::from_bytes(&p.to_bytes())
        };
        for (window, peak) in [(MIN_WINDOW_NS, 0), (MAX_WINDOW_NS, MAX_COUNT)] {
            assert!(with(&mut p, window, peak).is_ok(), "{window} {peak}");
        }
        // A window of 584 years would hold the second fork of a normal profile for
        // good: the file is damaged, not a limit.
        for (window, peak) in [
            (0, 1),
            (MIN_WINDOW_NS - 1, 1),
            (MAX_WINDOW_NS + 1, 1),
            (u64::MAX, 0),
            (MIN_WINDOW_NS, MAX_COUNT + 1),
            (MIN_WINDOW_NS, u32::MAX),
        ] {
            let e = with(&mut p, window, peak).unwrap_err();
            assert!(
                matches!(e, ProfileError::Corrupt(_)),
                "{window} {peak}: {e}"
            );
        }
        // What a config can ask for is what a profile can hold.
        for secs in [0.001, 0.0010000001, 3600.0] {
            let c = PhConfig {
                rate_window_secs: secs,
                ..config.clone()
            };
            c.validate().unwrap();
            let r = LearnedRates::new(c.rate_window_ns());
            r.validate().unwrap();
        }
        for secs in [0.0009, 3600.001, f64::NAN, f64::INFINITY, -1.0, 0.0] {
            let c = PhConfig {
                rate_window_secs: secs,
                ..config.clone()
            };
            assert!(c.validate().is_err(), "{secs}");
        }
    }

    #[test]
    fn an_argument_aware_profile_keeps_its_i386_calls_when_folded_to_calls() {
        use crate::symbols::{Arg, SymbolMode, ENRICHED_BASE};
        let config = PhConfig {
            symbols: SymbolMode::Args,
            ..PhConfig::default()
        };
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/x", &config);
        let mut task = crate::ph::PhTask::new(&p);
        let arg = Arg::Path {
            path: b"/srv/a/b".to_vec(),
            flags: 0,
        };
        // The monitor numbers an i386 call 0x10000 + nr and captures no argument
        // for it; x86_64 openat (257) gets a class.
        let i386_read = 0x1_0000 + 3;
        let mut seen = vec![];
        for (call, a) in [
            (257, Some(&arg)),
            (i386_read, None),
            (0, None),
            (257, Some(&arg)),
        ] {
            let s = p.symbol_of(&task, call, a);
            seen.push(s);
            p.on_syscall(&mut task, s, false, 0, &config, &mut |_| {});
        }
        assert_eq!(seen[0], ENRICHED_BASE);
        assert_eq!(seen[1], i386_read);
        assert_eq!(p.calls(), vec![0, 257, i386_read]);
        let raw = p.raw_pairs();
        assert!(raw.contains(&(i386_read, 257, 1)), "{raw:?}");
        assert!(raw.contains(&(0, i386_read, 1)), "{raw:?}");
        // A call numbered in the enriched range never gets a class of its own.
        let t = p.symbol_table().unwrap();
        assert_eq!(t.call_of(ENRICHED_BASE), Some(257));
        assert_eq!(t.call_of(crate::symbols::UNSEEN), None);
        assert_eq!(t.call_of(ENRICHED_BASE + 7), None);
    }

    #[test]
    fn a_profile_with_counters_at_their_maximum_keeps_working() {
        // Counters read from a damaged (or very old) file may be anything: the next
        // call must neither panic (debug) nor wrap them to 0 (release).
        let config = PhConfig {
            normal_wait_secs: 0.0,
            anomaly_limit: u64::MAX,
            ..PhConfig::default()
        };
        let mut p = PhProfile::new(ExeKey { dev: 1, ino: 2 }, "/x", &config);
        let mut task = crate::ph::PhTask::new(&p);
        for call in [1, 2, 1, 2] {
            p.on_syscall(&mut task, call, false, 0, &config, &mut |_| {});
        }
        p.normalize(&mut |_| {});
        p.train_count = u64::MAX;
        p.last_mod_count = u64::MAX;
        p.anomalies = u64::MAX;
        let mut p = PhProfile::from_bytes(&p.to_bytes()).unwrap();
        let mut task = crate::ph::PhTask::new(&p);
        for call in [1, 2, 9, 9, 1] {
            p.on_syscall(&mut task, call, false, 1, &config, &mut |_| {});
        }
        assert_eq!(p.train_count, u64::MAX);
        assert_eq!(p.anomalies, u64::MAX);
    }
}

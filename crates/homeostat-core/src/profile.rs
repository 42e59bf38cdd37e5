//! The profile file format: a trained model and what it was trained on.
//!
//! A profile outlives the process that wrote it and is read by other front ends (the
//! launcher, the daemon), so the format is explicit and defended: a fixed header with
//! a magic number, a format version and a CRC-32 of the payload, then the payload in
//! postcard (a compact, stable serde encoding). Loading a truncated, damaged or foreign
//! file is an error that says which of these it is, never a panic and never a model
//! silently built from garbage. Writing the bytes atomically to disk is the caller's
//! job (this crate does no I/O).
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `HMSTPROF` |
//! | 8 | 2 | format version (1) |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 4 | CRC-32 (IEEE) of the payload |
//! | 16 | 8 | payload length in bytes |
//! | 24 | n | payload: postcard of [`StoredProfile`] |

use serde::{Deserialize, Serialize};

use crate::markov::Markov;
use crate::model::{AnyModel, Model, ModelKind, ModelSpec};
use crate::pairs::Pairs;
use crate::stide::Stide;

/// First bytes of every profile file.
pub const MAGIC: &[u8; 8] = b"HMSTPROF";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 24;
/// Largest payload accepted (a w = 33 pairs table of 510 calls is about 1 MiB; the
/// cap keeps a damaged length field from asking for gigabytes).
pub const MAX_PAYLOAD: u64 = 1 << 30;

/// Why bytes are not a usable profile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// The magic number is missing: some other kind of file.
    #[error("not a homeostat profile (bad magic number)")]
    NotAProfile,
    /// Written by a format version this build does not read.
    #[error(
        "profile format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    /// Shorter than its header says.
    #[error("profile is truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// Bytes the header promises.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// Longer than its header says.
    #[error("profile has {0} unexpected bytes after its payload")]
    TrailingData(u64),
    /// The payload does not match its checksum.
    #[error(
        "profile is damaged: checksum mismatch (stored {stored:08x}, computed {computed:08x})"
    )]
    Checksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the payload read.
        computed: u32,
    },
    /// The payload decodes but does not describe a valid model.
    #[error("profile is corrupt: {0}")]
    Corrupt(String),
}

/// What a profile was trained on, for display and provenance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileMeta {
    /// Architecture whose call numbers the profile holds (`x86_64`, `i386`).
    pub arch: String,
    /// When training finished, seconds since the Unix epoch (supplied by the caller).
    pub created_unix: u64,
    /// Number of traces trained.
    pub traces: u64,
    /// Free text: the command or dataset it was trained from.
    pub source: String,
}

/// The payload as stored: the model's trained state, not its derived test tables
/// (those are rebuilt on load, so they can never disagree with the training data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredProfile {
    /// Provenance.
    pub meta: ProfileMeta,
    /// The model configuration.
    pub spec: ModelSpec,
    /// Raw call numbers in id order.
    pub symbols: Vec<u32>,
    /// Calls trained.
    pub calls: u64,
    /// Window models: packed windows with training counts.
    pub windows: Vec<(u128, u32)>,
    /// Lookahead pairs: (current id, previous id, distance bitmask).
    pub pairs: Vec<(u16, u16, u32)>,
}

/// A trained model with its provenance.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Provenance.
    pub meta: ProfileMeta,
    /// The model, finished (ready to test).
    pub model: AnyModel,
}

impl Profile {
    /// Wraps a trained model; calls [`Model::finish`] so it is ready to test.
    pub fn new(meta: ProfileMeta, mut model: AnyModel) -> Self {
        model.finish();
        Profile { meta, model }
    }

    /// The stored form of this profile.
    pub fn to_stored(&self) -> StoredProfile {
        let spec = self.model.spec().clone();
        let (windows, pairs) = match &self.model {
            AnyModel::Stide(m) => (m.windows(), vec![]),
            AnyModel::Markov(m) => (m.windows(), vec![]),
            AnyModel::Pairs(m) => (vec![], m.entries()),
        };
        StoredProfile {
            meta: self.meta.clone(),
            spec,
            symbols: self.model.symbols().to_vec(),
            calls: self.model.trained_calls(),
            windows,
            pairs,
        }
    }

    /// Rebuilds a profile from its stored form, validating every field.
    pub fn from_stored(s: StoredProfile) -> Result<Self, ProfileError> {
        s.spec
            .validate()
            .map_err(|e| ProfileError::Corrupt(e.to_string()))?;
        if s.symbols.len() > 4096 {
            return Err(ProfileError::Corrupt(format!(
                "{} distinct calls (at most 4096 expected)",
                s.symbols.len()
            )));
        }
        let bad = |what: &str| ProfileError::Corrupt(format!("invalid {what} entry"));
        let model = match s.spec.kind {
            ModelKind::Stide | ModelKind::TStide => AnyModel::Stide(
                Stide::from_parts(s.spec, &s.symbols, &s.windows, s.calls)
                    .ok_or_else(|| bad("window"))?,
            ),
            ModelKind::Markov => AnyModel::Markov(
                Markov::from_parts(s.spec, &s.symbols, &s.windows, s.calls)
                    .ok_or_else(|| bad("n-gram"))?,
            ),
            ModelKind::Pairs => AnyModel::Pairs(
                Pairs::from_parts(s.spec, &s.symbols, &s.pairs, s.calls)
                    .ok_or_else(|| bad("pair"))?,
            ),
        };
        Ok(Profile {
            meta: s.meta,
            model,
        })
    }

    /// The complete file contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload = postcard::to_allocvec(&self.to_stored())
            .expect("serialising plain data into a Vec cannot fail");
        frame(MAGIC, &payload)
    }

    /// Parses and validates file contents.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProfileError> {
        let payload = unframe(MAGIC, bytes)?;
        Self::from_payload(payload)
    }

    /// Decodes a payload whose checksum has been verified (exposed for fuzzing the
    /// decoder behind the checksum).
    pub fn from_payload(payload: &[u8]) -> Result<Self, ProfileError> {
        let (stored, rest): (StoredProfile, &[u8]) = postcard::take_from_bytes(payload)
            .map_err(|e| ProfileError::Corrupt(format!("payload does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(ProfileError::TrailingData(rest.len() as u64));
        }
        Self::from_stored(stored)
    }
}

/// Wraps a payload in the header: magic, version, CRC-32, length. Shared by every
/// file kind homeostat persists (each with its own magic).
pub fn frame(magic: &[u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks magic, version, length and checksum; returns the payload.
pub fn unframe<'a>(magic: &[u8; 8], bytes: &'a [u8]) -> Result<&'a [u8], ProfileError> {
    if bytes.len() < magic.len() || &bytes[..magic.len()] != magic {
        return Err(ProfileError::NotAProfile);
    }
    if bytes.len() < HEADER_LEN {
        return Err(ProfileError::Truncated {
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let version = u16_at(8);
    if version != FORMAT_VERSION {
        return Err(ProfileError::UnsupportedVersion(version));
    }
    let stored = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len8);
    let found = (bytes.len() - HEADER_LEN) as u64;
    if len > MAX_PAYLOAD || len > found {
        return Err(ProfileError::Truncated {
            // A damaged length field can be anything, up to u64::MAX.
            expected: (HEADER_LEN as u64).saturating_add(len),
            found: bytes.len() as u64,
        });
    }
    if found > len {
        return Err(ProfileError::TrailingData(found - len));
    }
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(ProfileError::Checksum { stored, computed });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, Scratch};

    fn sample(kind: ModelKind) -> Profile {
        let mut m = AnyModel::new(ModelSpec::new(kind)).unwrap();
        m.train_trace(&[1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 99_999]);
        m.train_trace(&[3, 3]);
        let meta = ProfileMeta {
            arch: "x86_64".into(),
            created_unix: 1_800_000_000,
            traces: 2,
            source: "unit test".into(),
        };
        Profile::new(meta, m)
    }

    #[test]
    fn round_trip_every_model() {
        for kind in ModelKind::ALL {
            let p = sample(kind);
            let bytes = p.to_bytes();
            let q = Profile::from_bytes(&bytes).unwrap();
            assert_eq!(q.meta, p.meta);
            assert_eq!(q.to_stored(), p.to_stored());
            let mut s = Scratch::default();
            let probe = [1, 2, 3, 9, 4, 5, 6, 7, 3, 3];
            assert_eq!(
                p.model.test_trace(&probe, &mut s),
                q.model.test_trace(&probe, &mut s),
                "{kind}"
            );
        }
    }

    #[test]
    fn damage_is_named() {
        let bytes = sample(ModelKind::Pairs).to_bytes();
        assert_eq!(
            Profile::from_bytes(b"#!/bin/sh\n").unwrap_err(),
            ProfileError::NotAProfile
        );
        assert!(matches!(
            Profile::from_bytes(&bytes[..bytes.len() - 3]).unwrap_err(),
            ProfileError::Truncated { .. }
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            Profile::from_bytes(&flipped).unwrap_err(),
            ProfileError::Checksum { .. }
        ));
        let mut newer = bytes.clone();
        newer[8] = 9;
        assert_eq!(
            Profile::from_bytes(&newer).unwrap_err(),
            ProfileError::UnsupportedVersion(9)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Profile::from_bytes(&longer).unwrap_err(),
            ProfileError::TrailingData(1)
        );
    }

    #[test]
    fn huge_length_field_is_truncation_not_overflow() {
        // Found by fuzz_profile: a length near u64::MAX overflowed the error message.
        let mut bytes = sample(ModelKind::Stide).to_bytes();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            Profile::from_bytes(&bytes).unwrap_err(),
            ProfileError::Truncated {
                expected: u64::MAX,
                found: bytes.len() as u64
            }
        );
    }

    #[test]
    fn invalid_payload_is_corrupt_not_a_panic() {
        let mut s = sample(ModelKind::Stide).to_stored();
        s.windows.push((u128::MAX - 1, 1));
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert!(matches!(
            Profile::from_payload(&bytes).unwrap_err(),
            ProfileError::Corrupt(_)
        ));
        let mut s = sample(ModelKind::Pairs).to_stored();
        s.pairs.push((400, 1, 1));
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert!(Profile::from_payload(&bytes).is_err());
        let mut s = sample(ModelKind::Stide).to_stored();
        s.spec.window = 0;
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert!(Profile::from_payload(&bytes)
            .unwrap_err()
            .to_string()
            .contains("window 0"));
    }
}

/// Bytes of the header that [`framed_len`] needs.
pub const FRAME_HEADER_LEN: usize = HEADER_LEN;

/// The whole file's length (header and payload) as the header announces it, checked
/// before anything else is read: a reader on disk caps its read by it, so a device, a
/// foreign file or a huge sparse file is refused after [`FRAME_HEADER_LEN`] bytes
/// instead of being read whole. `header` is the file's first bytes (all of them if the
/// file is shorter than the header).
pub fn framed_len(magic: &[u8; 8], header: &[u8]) -> Result<u64, ProfileError> {
    if header.len() < magic.len() || &header[..magic.len()] != magic {
        return Err(ProfileError::NotAProfile);
    }
    if header.len() < HEADER_LEN {
        return Err(ProfileError::Truncated {
            expected: HEADER_LEN as u64,
            found: header.len() as u64,
        });
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != FORMAT_VERSION {
        return Err(ProfileError::UnsupportedVersion(version));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&header[16..24]);
    let len = u64::from_le_bytes(len8);
    if len > MAX_PAYLOAD {
        return Err(ProfileError::Corrupt(format!(
            "header announces a {len}-byte payload, more than the {MAX_PAYLOAD}-byte limit"
        )));
    }
    Ok(HEADER_LEN as u64 + len)
}

#[cfg(test)]
mod framed_len_tests {
    use super::*;

    #[test]
    fn header_announces_the_length_and_refuses_foreign_bytes() {
        let bytes = frame(MAGIC, b"payload");
        assert_eq!(framed_len(MAGIC, &bytes[..HEADER_LEN]), Ok(31));
        assert_eq!(framed_len(MAGIC, &[0; 24]), Err(ProfileError::NotAProfile));
        assert!(matches!(
            framed_len(MAGIC, &bytes[..10]),
            Err(ProfileError::Truncated { .. })
        ));
        let mut huge = bytes[..HEADER_LEN].to_vec();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            framed_len(MAGIC, &huge),
            Err(ProfileError::Corrupt(_))
        ));
    }
}

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
//! | 8 | 2 | format version (2; 1 is still read) |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 4 | CRC-32 (IEEE) of the payload |
//! | 16 | 8 | payload length in bytes |
//! | 24 | n | payload: postcard of [`StoredProfileV2`] (version 1: [`StoredProfile`]) |
//!
//! Version 2 stores any model as a kind tag and an opaque payload ([`StoredModel`]),
//! so models defined outside this crate (registered in a
//! [`crate::registry::Registry`]) save into the same checksummed file.

use serde::{Deserialize, Serialize};

use crate::classic::{decode_all, AnyModel, ClassicParts};
use crate::model::{Model, ModelKind, ModelSpec};
use crate::symbols::SymbolTable;

/// First bytes of every profile file.
pub const MAGIC: &[u8; 8] = b"HMSTPROF";
/// The frame version of homeostat's other checksummed files (pH profiles), written
/// and read by [`frame`] and [`unframe`].
pub const FORMAT_VERSION: u16 = 1;
/// The profile format version this build writes: 2 stores any model as a kind tag
/// and a payload. Version 1 (classic models only) is still read.
pub const PROFILE_VERSION: u16 = 2;
/// The version of a profile trained on the argument-aware alphabet: version 2's
/// payload followed by the [`SymbolTable`] ([`StoredProfileV3`]). Plain profiles stay
/// version 2, so older builds still read them and refuse the enriched ones (whose
/// symbol numbers they would misread as calls).
pub const PROFILE_VERSION_ARGS: u16 = 3;
const HEADER_LEN: usize = 24;
/// Largest payload accepted (a w = 33 pairs table of 510 calls is about 1 MiB, a
/// neural model a few MiB; the cap keeps a damaged length field from asking for
/// gigabytes).
pub const MAX_PAYLOAD: u64 = 1 << 30;

/// Why bytes are not a usable profile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// The magic number is missing: some other kind of file.
    #[error("not a homeostat profile (bad magic number)")]
    NotAProfile,
    /// Written by a format version this build does not read.
    #[error("profile format version {0} is not supported by this build")]
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
    /// The profile holds a model kind this build (or this front end) cannot run.
    #[error("profile holds a {kind} model, which {why}")]
    UnsupportedModel {
        /// The stored kind tag.
        kind: String,
        /// Why it cannot be used here.
        why: String,
    },
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

/// A classic profile's content, and the payload layout of format version 1: the
/// model's trained state, not its derived test tables (those are rebuilt on load, so
/// they can never disagree with the training data).
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

/// Any model as stored in a version 2 profile: the registry name of its kind and a
/// payload only that kind's `load` decodes (postcard for the models in this crate;
/// an external crate chooses its own encoding, covered by the file's CRC all the
/// same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredModel {
    /// Kind tag: `stide`, `tstide`, `pairs`, `markov`, `knn`, `ensemble`, or a name an
    /// external crate registered.
    pub kind: String,
    /// The model's own encoding.
    pub payload: Vec<u8>,
}

/// The payload of a version 2 profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredProfileV2 {
    /// Provenance.
    pub meta: ProfileMeta,
    /// The model.
    pub model: StoredModel,
}

/// The payload of a version 3 profile: a model trained on (call, argument class)
/// symbols and the table that makes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredProfileV3 {
    /// Provenance.
    pub meta: ProfileMeta,
    /// The model.
    pub model: StoredModel,
    /// The learned argument classes.
    pub symbols: SymbolTable,
}

/// Decodes a profile file into provenance and the stored model, whatever its version
/// (version 1 holds classic models only and is converted; version 3's symbol table is
/// read by [`profile_symbols`]).
pub fn decode_profile(bytes: &[u8]) -> Result<StoredProfileV2, ProfileError> {
    let (version, payload) =
        unframe_versions(MAGIC, bytes, &[1, PROFILE_VERSION, PROFILE_VERSION_ARGS])?;
    if version == PROFILE_VERSION_ARGS {
        let s: StoredProfileV3 = decode_all(payload).map_err(ProfileError::Corrupt)?;
        return Ok(StoredProfileV2 {
            meta: s.meta,
            model: s.model,
        });
    }
    decode_payload(version, payload)
}

/// The symbol table of a profile trained on the argument-aware alphabet (version 3);
/// `None` for a plain call-number profile.
pub fn profile_symbols(bytes: &[u8]) -> Result<Option<SymbolTable>, ProfileError> {
    let (version, payload) =
        unframe_versions(MAGIC, bytes, &[1, PROFILE_VERSION, PROFILE_VERSION_ARGS])?;
    if version != PROFILE_VERSION_ARGS {
        return Ok(None);
    }
    let s: StoredProfileV3 = decode_all(payload).map_err(ProfileError::Corrupt)?;
    s.symbols
        .validated()
        .map(Some)
        .map_err(|e| ProfileError::Corrupt(e.to_string()))
}

fn decode_payload(version: u16, payload: &[u8]) -> Result<StoredProfileV2, ProfileError> {
    if version == 1 {
        let s: StoredProfile = decode_all(payload).map_err(ProfileError::Corrupt)?;
        let kind = s.spec.kind.name().to_string();
        let parts = ClassicParts {
            spec: s.spec,
            symbols: s.symbols,
            calls: s.calls,
            windows: s.windows,
            pairs: s.pairs,
        };
        return Ok(StoredProfileV2 {
            meta: s.meta,
            model: StoredModel {
                kind,
                payload: postcard::to_allocvec(&parts)
                    .expect("serialising plain data into a Vec cannot fail"),
            },
        });
    }
    decode_all(payload).map_err(ProfileError::Corrupt)
}

/// Encodes provenance and a stored model as a complete version 2 profile file.
pub fn encode_profile(meta: &ProfileMeta, model: StoredModel) -> Vec<u8> {
    let payload = postcard::to_allocvec(&StoredProfileV2 {
        meta: meta.clone(),
        model,
    })
    .expect("serialising plain data into a Vec cannot fail");
    frame_version(MAGIC, PROFILE_VERSION, &payload)
}

/// [`encode_profile`] with the symbol table of an argument-aware profile (version 3);
/// without one, the same bytes as [`encode_profile`].
pub fn encode_profile_with(
    meta: &ProfileMeta,
    model: StoredModel,
    symbols: Option<&SymbolTable>,
) -> Vec<u8> {
    let Some(symbols) = symbols else {
        return encode_profile(meta, model);
    };
    let payload = postcard::to_allocvec(&StoredProfileV3 {
        meta: meta.clone(),
        model,
        symbols: symbols.clone(),
    })
    .expect("serialising plain data into a Vec cannot fail");
    frame_version(MAGIC, PROFILE_VERSION_ARGS, &payload)
}

/// A trained classic model with its provenance: what the launcher and the daemon
/// load, since they keep a [`crate::Cursor`] per task. Other models load through
/// [`crate::registry::Registry::load_profile`].
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
        let p = self.model.to_parts();
        StoredProfile {
            meta: self.meta.clone(),
            spec: p.spec,
            symbols: p.symbols,
            calls: p.calls,
            windows: p.windows,
            pairs: p.pairs,
        }
    }

    /// Rebuilds a profile from its stored form, validating every field.
    pub fn from_stored(s: StoredProfile) -> Result<Self, ProfileError> {
        let model = AnyModel::from_parts(ClassicParts {
            spec: s.spec,
            symbols: s.symbols,
            calls: s.calls,
            windows: s.windows,
            pairs: s.pairs,
        })
        .map_err(ProfileError::Corrupt)?;
        Ok(Profile {
            meta: s.meta,
            model,
        })
    }

    /// The complete file contents (format version 2).
    pub fn to_bytes(&self) -> Vec<u8> {
        let model = StoredModel {
            kind: self.model.spec().kind.name().to_string(),
            payload: postcard::to_allocvec(&self.model.to_parts())
                .expect("serialising plain data into a Vec cannot fail"),
        };
        encode_profile(&self.meta, model)
    }

    /// Parses and validates file contents (format version 1 or 2).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProfileError> {
        Self::from_v2(decode_profile(bytes)?)
    }

    /// Decodes a version 2 payload whose checksum has been verified (exposed for
    /// fuzzing the decoder behind the checksum).
    pub fn from_payload(payload: &[u8]) -> Result<Self, ProfileError> {
        Self::from_v2(decode_payload(PROFILE_VERSION, payload)?)
    }

    fn from_v2(s: StoredProfileV2) -> Result<Self, ProfileError> {
        let kind: ModelKind = s
            .model
            .kind
            .parse()
            .ok()
            .filter(|k: &ModelKind| k.name() == s.model.kind)
            .ok_or_else(|| ProfileError::UnsupportedModel {
                kind: s.model.kind.clone(),
                why: "this front end cannot run (it runs stide, tstide, pairs and markov)".into(),
            })?;
        let parts: ClassicParts = decode_all(&s.model.payload).map_err(ProfileError::Corrupt)?;
        if parts.spec.kind != kind {
            return Err(ProfileError::Corrupt(format!(
                "kind tag {kind} but the payload holds a {} model",
                parts.spec.kind
            )));
        }
        let model = AnyModel::from_parts(parts).map_err(ProfileError::Corrupt)?;
        Ok(Profile {
            meta: s.meta,
            model,
        })
    }
}

/// Wraps a payload in the header: magic, version [`FORMAT_VERSION`], CRC-32, length.
/// Shared by every file kind homeostat persists (each with its own magic).
pub fn frame(magic: &[u8; 8], payload: &[u8]) -> Vec<u8> {
    frame_version(magic, FORMAT_VERSION, payload)
}

/// [`frame`] with an explicit format version.
pub fn frame_version(magic: &[u8; 8], version: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks magic, version ([`FORMAT_VERSION`]), length and checksum; returns the
/// payload.
pub fn unframe<'a>(magic: &[u8; 8], bytes: &'a [u8]) -> Result<&'a [u8], ProfileError> {
    unframe_versions(magic, bytes, &[FORMAT_VERSION]).map(|(_, p)| p)
}

/// [`unframe`] accepting any of `versions`; returns the version and the payload.
pub fn unframe_versions<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
    versions: &[u16],
) -> Result<(u16, &'a [u8]), ProfileError> {
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
    if !versions.contains(&version) {
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
    Ok((version, payload))
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
    fn every_model_trained_on_5000_distinct_calls_round_trips() {
        // Training keeps every distinct call (past MAX_ID they share the last id);
        // the loader refused more than 4096 as corrupt.
        let calls: Vec<u32> = (0..5000).collect();
        for kind in ModelKind::ALL {
            let mut m = AnyModel::new(ModelSpec::new(kind)).unwrap();
            m.train_trace(&calls);
            let p = Profile::new(ProfileMeta::default(), m);
            let q = Profile::from_bytes(&p.to_bytes()).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let mut s = Scratch::default();
            let probe: Vec<u32> = (4000..4100).chain(0..10).collect();
            assert_eq!(
                p.model.test_trace(&probe, &mut s),
                q.model.test_trace(&probe, &mut s),
                "{kind}"
            );
        }
        // A symbol stored twice is refused.
        let mut parts = sample(ModelKind::Stide).model.to_parts();
        parts.symbols[1] = parts.symbols[0];
        assert!(AnyModel::from_parts(parts)
            .unwrap_err()
            .contains("stored twice"));
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

    /// A version 2 payload holding a (possibly invalid) classic model.
    fn v2_payload(s: &StoredProfile) -> Vec<u8> {
        let parts = ClassicParts {
            spec: s.spec.clone(),
            symbols: s.symbols.clone(),
            calls: s.calls,
            windows: s.windows.clone(),
            pairs: s.pairs.clone(),
        };
        postcard::to_allocvec(&StoredProfileV2 {
            meta: s.meta.clone(),
            model: StoredModel {
                kind: s.spec.kind.name().into(),
                payload: postcard::to_allocvec(&parts).unwrap(),
            },
        })
        .unwrap()
    }

    #[test]
    fn invalid_payload_is_corrupt_not_a_panic() {
        let mut s = sample(ModelKind::Stide).to_stored();
        s.windows.push((u128::MAX - 1, 1));
        assert!(matches!(
            Profile::from_payload(&v2_payload(&s)).unwrap_err(),
            ProfileError::Corrupt(_)
        ));
        let mut s = sample(ModelKind::Pairs).to_stored();
        s.pairs.push((400, 1, 1));
        assert!(Profile::from_payload(&v2_payload(&s)).is_err());
        let mut s = sample(ModelKind::Stide).to_stored();
        s.spec.window = 0;
        assert!(Profile::from_payload(&v2_payload(&s))
            .unwrap_err()
            .to_string()
            .contains("window 0"));
        // A kind tag that disagrees with the payload is corrupt, not silently used.
        let s = sample(ModelKind::Markov).to_stored();
        let mut v2: StoredProfileV2 = postcard::from_bytes(&v2_payload(&s)).unwrap();
        v2.model.kind = "stide".into();
        let e = Profile::from_payload(&postcard::to_allocvec(&v2).unwrap()).unwrap_err();
        assert!(e.to_string().contains("kind tag stide"), "{e}");
    }

    #[test]
    fn version_1_files_still_load() {
        let p = sample(ModelKind::Markov);
        let v1 = frame_version(MAGIC, 1, &postcard::to_allocvec(&p.to_stored()).unwrap());
        let q = Profile::from_bytes(&v1).unwrap();
        assert_eq!(q.to_stored(), p.to_stored());
        // Saving writes version 2.
        assert_eq!(u16::from_le_bytes([q.to_bytes()[8], q.to_bytes()[9]]), 2);
    }
}

/// Bytes of the header that [`framed_len`] needs.
pub const FRAME_HEADER_LEN: usize = HEADER_LEN;

/// The whole file's length (header and payload) as the header announces it, checked
/// before anything else is read: a reader on disk caps its read by it, so a device, a
/// foreign file or a huge sparse file is refused after [`FRAME_HEADER_LEN`] bytes
/// instead of being read whole. `header` is the file's first bytes (all of them if the
/// file is shorter than the header). The version is left to the decoder (each file
/// kind reads its own set of versions).
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

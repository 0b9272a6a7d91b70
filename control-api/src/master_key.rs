//! The operator's master key: it seals secrets the control plane stores
//! (today the private keys of tenants' certificates) so that the database
//! never holds them in clear.
//!
//! - The key is 32 random bytes, held by the operator: a file
//!   (`--master-key-file`) or the environment (`GANNET_MASTER_KEY`), as 64
//!   hex characters or the standard base64 of the 32 bytes (surrounding
//!   whitespace ignored). `gannet dev` makes its own
//!   ([`MasterKey::load_or_create`]).
//! - Sealing is AES-256-GCM (ring) with a fresh random 96-bit nonce per
//!   seal. A sealed value is `1 (format version) ‖ nonce (12 bytes) ‖
//!   ciphertext ‖ tag (16 bytes)`.
//! - The caller binds each sealed value to where it is stored with the
//!   associated data (for a certificate's key: its hostname, see
//!   [`certificate_key_aad`]): a value copied to another row does not open.
//!
//! Neither the key nor anything it opens is ever logged: [`MasterKey`]'s
//! `Debug` prints no key material.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, MAX_TAG_LEN, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};

/// Bytes in a master key.
pub const KEY_LEN: usize = 32;

/// The first byte of every sealed value: its format.
const FORMAT_V1: u8 = 1;

/// What to give, for error messages.
const EXPECTED: &str = "expected 64 hex characters or the base64 of 32 random bytes (e.g. `head -c 32 /dev/urandom | base64 > master.key`)";

/// The associated data that binds a certificate's sealed private key to its
/// hostname: a key sealed for one hostname does not open as another's.
pub fn certificate_key_aad(hostname: &str) -> Vec<u8> {
    format!("gannet certificate key\0{hostname}").into_bytes()
}

/// A master key that cannot be read or made, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("reading the master key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file could not be written (`load_or_create`).
    #[error("writing the master key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The value is empty.
    #[error("the master key is empty: {expected}", expected = EXPECTED)]
    Empty,
    /// The value decodes, but not to 32 bytes.
    #[error("the master key is {found}, not 32 bytes: {expected}", expected = EXPECTED)]
    WrongLength {
        /// What was found, e.g. `20 hex characters (10 bytes)`.
        found: String,
    },
    /// The value is neither hex nor base64.
    #[error("the master key is neither hex nor base64: {expected}", expected = EXPECTED)]
    Encoding,
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Sealing or opening failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The system's random number generator failed (no nonce).
    #[error("the system random number generator failed")]
    Random,
    /// Sealing failed (the plaintext is too long for one AEAD message).
    #[error("sealing failed")]
    Seal,
    /// The sealed value is of a format this version does not know.
    #[error("sealed value of unknown format {0}")]
    UnknownFormat(u8),
    /// The sealed value is too short to be one.
    #[error("sealed value truncated")]
    Truncated,
    /// Authentication failed: another master key sealed it, or it was
    /// altered, or moved from the row it was sealed for.
    #[error(
        "the sealed value does not open with this master key (sealed with another key, altered, or moved from its row)"
    )]
    Mismatch,
}

/// The operator's master key (AES-256-GCM). Cheap to clone; its `Debug`
/// shows no key material.
#[derive(Clone)]
pub struct MasterKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> MasterKey {
        // AES-256 takes any 32 bytes; `new` fails only on a wrong length.
        let unbound =
            UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256-GCM takes any 32-byte key");
        MasterKey {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    /// A new random key (for `gannet dev` and tests; an operator keeps
    /// theirs in a file).
    pub fn generate() -> Result<MasterKey, KeyError> {
        Ok(MasterKey::from_bytes(&random_bytes()?))
    }

    /// Parses 64 hex characters, or the standard base64 (padded or not)
    /// of 32 bytes; whitespace around the value is ignored.
    pub fn parse(text: &str) -> Result<MasterKey, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        if text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes = decode_hex(text).ok_or_else(|| KeyError::WrongLength {
                found: format!("{} hex characters", text.len()),
            })?;
            return Self::exact(bytes, || {
                format!("{} hex characters ({} bytes)", text.len(), text.len() / 2)
            });
        }
        let bytes = decode_base64(text).ok_or(KeyError::Encoding)?;
        let n = bytes.len();
        Self::exact(bytes, || format!("base64 of {n} bytes"))
    }

    /// Reads and parses the key file at `path`. Warns when others than its
    /// owner may read it.
    pub fn from_file(path: &Path) -> Result<MasterKey, KeyError> {
        let read_error = |source: std::io::Error| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        warn_if_readable_by_others(path);
        MasterKey::parse(&text)
    }

    /// The key in the file at `path`; if there is none, a new random key
    /// written there first (64 hex characters, mode 0600). For `gannet
    /// dev`, which keeps its key in its state directory.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if path.exists() {
            return MasterKey::from_file(path);
        }
        let bytes = random_bytes()?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let write_error = |source: std::io::Error| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        let mut file = match created {
            Ok(file) => file,
            // Made meanwhile by another process: use that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return MasterKey::from_file(path);
            }
            Err(e) => return Err(write_error(e)),
        };
        file.write_all(format!("{hex}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write_error)?;
        Ok(MasterKey::from_bytes(&bytes))
    }

    /// Seals `plaintext`, bound to `aad`: `1 ‖ nonce ‖ ciphertext ‖ tag`,
    /// with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + MAX_TAG_LEN);
        sealed.push(FORMAT_V1);
        sealed.extend_from_slice(&nonce);
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .map_err(|_| CryptoError::Seal)?;
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Opens what [`MasterKey::seal`] sealed with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (&format, rest) = sealed.split_first().ok_or(CryptoError::Truncated)?;
        if format != FORMAT_V1 {
            return Err(CryptoError::UnknownFormat(format));
        }
        if rest.len() < NONCE_LEN + MAX_TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Truncated)?;
        let mut in_out = ciphertext.to_vec();
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| CryptoError::Mismatch)?
            .len();
        in_out.truncate(len);
        Ok(in_out)
    }

    fn exact(bytes: Vec<u8>, found: impl FnOnce() -> String) -> Result<MasterKey, KeyError> {
        let bytes: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::WrongLength { found: found() })?;
        Ok(MasterKey::from_bytes(&bytes))
    }
}

fn random_bytes() -> Result<[u8; KEY_LEN], KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyError::Random)?;
    Ok(bytes)
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the master key file may be read by others than its owner; `chmod 600` it"
            );
        }
    }
}

/// Hex digits to bytes; `None` for an odd count.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

/// Standard base64 (`A-Z a-z 0-9 + /`, `=` padding optional) to bytes;
/// `None` if it is not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    if text.len() != body.len() && !text.len().is_multiple_of(4) {
        return None;
    }
    let value = |b: u8| -> Option<u32> {
        let v: u8 = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    };
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for b in body.bytes() {
        acc = (acc << 6) | value(b)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    // `printf` of the bytes 0..=31, base64.
    const BASE64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes(&[byte; KEY_LEN])
    }

    #[test]
    fn round_trip() {
        let k = key(7);
        let sealed = k
            .seal(b"-----BEGIN PRIVATE KEY-----", b"shop.example")
            .unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 27 + MAX_TAG_LEN);
        assert!(
            !sealed.windows(11).any(|w| w == b"PRIVATE KEY"),
            "the plaintext shows through"
        );
        assert_eq!(
            k.open(&sealed, b"shop.example").unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        // Empty plaintext too.
        let sealed = k.seal(b"", b"").unwrap();
        assert_eq!(k.open(&sealed, b"").unwrap(), b"");
    }

    #[test]
    fn every_seal_takes_a_fresh_nonce() {
        let k = key(7);
        let a = k.seal(b"same", b"aad").unwrap();
        let b = k.seal(b"same", b"aad").unwrap();
        assert_ne!(&a[1..1 + NONCE_LEN], &b[1..1 + NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn a_wrong_key_fails() {
        let sealed = key(1).seal(b"secret", b"aad").unwrap();
        assert_eq!(key(2).open(&sealed, b"aad"), Err(CryptoError::Mismatch));
    }

    #[test]
    fn a_wrong_aad_fails() {
        let k = key(1);
        let sealed = k
            .seal(b"secret", &certificate_key_aad("a.example"))
            .unwrap();
        assert_eq!(
            k.open(&sealed, &certificate_key_aad("b.example")),
            Err(CryptoError::Mismatch)
        );
        assert!(k.open(&sealed, &certificate_key_aad("a.example")).is_ok());
    }

    #[test]
    fn a_tampered_byte_fails() {
        let k = key(1);
        let sealed = k.seal(b"secret", b"aad").unwrap();
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(k.open(&bad, b"aad"), Err(CryptoError::Mismatch), "byte {i}");
        }
        let mut bad = sealed.clone();
        bad[0] = 9;
        assert_eq!(k.open(&bad, b"aad"), Err(CryptoError::UnknownFormat(9)));
        assert_eq!(
            k.open(&sealed[..sealed.len() - 1], b"aad"),
            Err(CryptoError::Mismatch)
        );
        assert_eq!(
            k.open(&sealed[..1 + NONCE_LEN + MAX_TAG_LEN - 1], b"aad"),
            Err(CryptoError::Truncated)
        );
        assert_eq!(k.open(&[], b"aad"), Err(CryptoError::Truncated));
    }

    #[test]
    fn hex_and_base64_parse_to_the_same_key() {
        let sealed = MasterKey::parse(HEX).unwrap().seal(b"x", b"").unwrap();
        for text in [
            BASE64,
            BASE64.trim_end_matches('='),
            &format!("  {BASE64}\n"),
            &format!("{}\n", HEX.to_uppercase()),
        ] {
            let k = MasterKey::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(k.open(&sealed, b"").unwrap(), b"x", "{text:?}");
        }
    }

    #[test]
    fn bad_values_are_refused_saying_why() {
        let cases: [(&str, &str); 7] = [
            ("", "empty"),
            (" \n", "empty"),
            ("abcd", "4 hex characters (2 bytes)"),
            (&HEX[..63], "63 hex characters"),
            (
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd",
                "base64 of 30 bytes",
            ),
            ("not a key at all!", "neither hex nor base64"),
            ("AAEC====", "neither hex nor base64"),
        ];
        for (text, want) in cases {
            let err = MasterKey::parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("head -c 32 /dev/urandom"), "{text:?}: {err}");
        }
    }

    #[test]
    fn debug_shows_no_key() {
        let shown = format!("{:?}", MasterKey::parse(HEX).unwrap());
        assert_eq!(shown, "MasterKey(<redacted>)");
    }

    #[test]
    fn files_are_read_and_made_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, format!("{BASE64}\n")).unwrap();
        let sealed = MasterKey::parse(HEX).unwrap().seal(b"x", b"").unwrap();
        assert_eq!(
            MasterKey::from_file(&path)
                .unwrap()
                .open(&sealed, b"")
                .unwrap(),
            b"x"
        );
        let err = MasterKey::from_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("reading the master key file"), "{err}");

        // Made once, then read back: the same key.
        let made = dir.path().join("dev.key");
        let first = MasterKey::load_or_create(&made).unwrap();
        let mode = std::fs::metadata(&made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = first.seal(b"y", b"").unwrap();
        let again = MasterKey::load_or_create(&made).unwrap();
        assert_eq!(again.open(&sealed, b"").unwrap(), b"y");
    }
}

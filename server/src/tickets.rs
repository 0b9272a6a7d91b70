//! TLS session tickets that resume at any gateway of a PoP.
//!
//! rustls resumes a session from a ticket the server sealed earlier. With
//! keys of its own process ([`rustls::crypto::ring::Ticketer`]) a gateway
//! can only resume its own tickets; a client sent to another gateway of the
//! same PoP does a full handshake. The control API generates ticket keys and
//! sends them to every gateway of a PoP by sync; [`SharedTicketer`] seals
//! and opens tickets with them, so a ticket issued by one gateway resumes at
//! another.
//!
//! A shared ticket is `id (16 bytes) ‖ nonce (12 random bytes) ‖
//! AES-256-GCM(plaintext)` with the key's id as additional authenticated
//! data. New tickets are sealed with the current key that expires last;
//! a ticket opens while the key it names is in the set and not expired.
//! Until keys are set (a gateway without a control API), and whenever none
//! of them is current, tickets are those of a per-process
//! [`rustls::crypto::ring::Ticketer`].

use arc_swap::ArcSwap;
use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use std::fmt;
use std::sync::Arc;

/// The lifetime announced to clients for a ticket, in seconds (6 hours).
///
/// A ticket is only honoured while the key it was sealed with is in the
/// set: rotation and erasure of keys, not this number, end a ticket's life.
/// The control API keeps a key in the set for at least this long after it
/// stops being the newest, so that tickets resume for the announced time.
pub const TICKET_LIFETIME_SECS: u32 = 6 * 3600;

/// Bytes of a key id at the start of every shared ticket.
const ID_LEN: usize = 16;
/// Bytes of the random nonce after the id.
const NONCE_LEN: usize = 12;
/// Bytes of the AES-GCM tag at the end.
const TAG_LEN: usize = 16;
/// The shortest shared ticket (an empty plaintext).
const MIN_TICKET_LEN: usize = ID_LEN + NONCE_LEN + TAG_LEN;

/// One ticket key as the control API hands it out.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    /// Public name of the key, written at the start of every ticket it
    /// seals.
    pub id: [u8; 16],
    /// The AES-256-GCM key. Never logged.
    pub secret: [u8; 32],
    /// Unix milliseconds from which the key is no longer used, neither to
    /// seal new tickets nor to open old ones.
    pub not_after_ms: i64,
}

/// A ticket key on the wire that does not parse. The messages never quote
/// the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketKeyError {
    /// The id is not 32 characters long.
    #[error("ticket key id must be 32 lowercase hex characters, got {len} characters")]
    IdLength {
        /// Its length in bytes.
        len: usize,
    },
    /// The id has a character that is not lowercase hex.
    #[error("ticket key id must be lowercase hex (0-9, a-f)")]
    IdNotHex,
    /// The secret is not 64 characters long.
    #[error(
        "ticket key secret must be 64 lowercase hex characters (32 bytes), got {len} characters"
    )]
    SecretLength {
        /// Its length in bytes.
        len: usize,
    },
    /// The secret has a character that is not lowercase hex.
    #[error("ticket key secret must be lowercase hex (0-9, a-f)")]
    SecretNotHex,
}

impl TicketKey {
    /// Parses a key from its wire form: the id as 32 lowercase hex
    /// characters, the secret as 64 lowercase hex characters (32 bytes),
    /// and the end of its use in unix milliseconds.
    pub fn from_wire(
        id_hex: &str,
        secret_hex: &str,
        not_after_ms: i64,
    ) -> Result<TicketKey, TicketKeyError> {
        if id_hex.len() != 2 * ID_LEN {
            return Err(TicketKeyError::IdLength { len: id_hex.len() });
        }
        let id = decode_hex::<16>(id_hex).ok_or(TicketKeyError::IdNotHex)?;
        if secret_hex.len() != 64 {
            return Err(TicketKeyError::SecretLength {
                len: secret_hex.len(),
            });
        }
        let secret = decode_hex::<32>(secret_hex).ok_or(TicketKeyError::SecretNotHex)?;
        Ok(TicketKey {
            id,
            secret,
            not_after_ms,
        })
    }

    /// The id as 32 lowercase hex characters.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is deliberately left out.
        f.debug_struct("TicketKey")
            .field("id", &hex(&self.id))
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// `N` bytes from `2 * N` lowercase hex characters.
fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Unix milliseconds, now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A shared key ready to seal and open.
struct ActiveKey {
    id: [u8; ID_LEN],
    not_after_ms: i64,
    key: aead::LessSafeKey,
}

impl ActiveKey {
    fn new(key: &TicketKey) -> Option<ActiveKey> {
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &key.secret).ok()?;
        Some(ActiveKey {
            id: key.id,
            not_after_ms: key.not_after_ms,
            key: aead::LessSafeKey::new(unbound),
        })
    }

    fn current(&self, now_ms: i64) -> bool {
        now_ms < self.not_after_ms
    }

    fn seal(&self, plain: &[u8], rng: &SystemRandom) -> Option<Vec<u8>> {
        // A random nonce: a counter would need coordinating between
        // gateways, and would tell clients how many tickets were issued.
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(MIN_TICKET_LEN + plain.len());
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&self.id[..]),
                &mut out[ID_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// Opens `ticket`, which starts with this key's id and is at least
    /// [`MIN_TICKET_LEN`] long (checked again here: nothing is indexed
    /// unchecked).
    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (id, rest) = ticket.split_at_checked(ID_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        if sealed.len() < TAG_LEN {
            return None;
        }
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut out = sealed.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, aead::Aad::from(id), &mut out)
            .ok()?
            .len();
        out.truncate(plain_len);
        Some(out)
    }
}

/// The shared keys in use, newest (latest `not_after_ms`) first.
#[derive(Default)]
struct KeySet {
    keys: Vec<ActiveKey>,
}

impl KeySet {
    /// The key new tickets are sealed with at `now_ms`.
    fn sealing(&self, now_ms: i64) -> Option<&ActiveKey> {
        self.keys.iter().find(|k| k.current(now_ms))
    }
}

/// Seals and opens session tickets with keys shared by the gateways of a
/// PoP (see the [module](self)); with no current shared key, with keys of
/// this process alone.
pub struct SharedTicketer {
    keys: ArcSwap<KeySet>,
    fallback: Arc<dyn ProducesTickets>,
    rng: SystemRandom,
}

impl SharedTicketer {
    /// A ticketer with no shared keys yet: it issues per-process tickets
    /// until [`SharedTicketer::set_keys`] gives it some.
    pub fn new() -> Result<Arc<SharedTicketer>, rustls::Error> {
        Ok(Arc::new(SharedTicketer {
            keys: ArcSwap::from_pointee(KeySet::default()),
            fallback: rustls::crypto::ring::Ticketer::new()?,
            rng: SystemRandom::new(),
        }))
    }

    /// Replaces the shared keys with `keys` from the next ticket on. Keys
    /// already expired are left out; with none left, tickets are
    /// per-process again. Tickets of keys no longer in the set stop
    /// resuming; per-process tickets issued before keys were set keep
    /// resuming here for as long as rustls keeps their keys.
    pub fn set_keys(&self, keys: Vec<TicketKey>) {
        self.set_keys_at(keys, now_ms());
    }

    fn set_keys_at(&self, keys: Vec<TicketKey>, now_ms: i64) {
        let mut active: Vec<ActiveKey> = keys
            .iter()
            .filter(|k| now_ms < k.not_after_ms)
            .filter_map(ActiveKey::new)
            .collect();
        // Newest first: the first current key seals.
        active.sort_by_key(|k| std::cmp::Reverse(k.not_after_ms));
        tracing::debug!(
            given = keys.len(),
            kept = active.len(),
            "session ticket keys replaced"
        );
        self.keys.store(Arc::new(KeySet { keys: active }));
    }

    /// How many shared keys are usable now (in the set and not expired).
    pub fn shared_key_count(&self) -> usize {
        let now = now_ms();
        self.keys
            .load()
            .keys
            .iter()
            .filter(|k| k.current(now))
            .count()
    }

    fn encrypt_at(&self, plain: &[u8], now_ms: i64) -> Option<Vec<u8>> {
        let set = self.keys.load();
        match set.sealing(now_ms) {
            Some(key) => key.seal(plain, &self.rng),
            None => self.fallback.encrypt(plain),
        }
    }

    fn decrypt_at(&self, ticket: &[u8], now_ms: i64) -> Option<Vec<u8>> {
        if ticket.len() >= MIN_TICKET_LEN
            && let Some(id) = ticket.get(..ID_LEN)
        {
            let set = self.keys.load();
            let mut named = false;
            for key in set
                .keys
                .iter()
                .filter(|k| k.id[..] == *id && k.current(now_ms))
            {
                named = true;
                if let Some(plain) = key.open(ticket) {
                    return Some(plain);
                }
            }
            if named {
                // A current shared key's ticket that does not open: not
                // one of the fallback's either.
                return None;
            }
        }
        self.fallback.decrypt(ticket)
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.encrypt_at(plain, now_ms())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.decrypt_at(cipher, now_ms())
    }
}

impl fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids and count only: never key material.
        let set = self.keys.load();
        let ids: Vec<String> = set.keys.iter().map(|k| hex(&k.id)).collect();
        f.debug_struct("SharedTicketer")
            .field("shared_keys", &ids.len())
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ReloadableCert, certified_key, server_config_with_tickets};
    use rustls::client::{ClientSessionMemoryCache, Resumption};
    use rustls::pki_types::ServerName;
    use rustls::{
        ClientConfig, ClientConnection, Connection, HandshakeKind, ServerConfig, ServerConnection,
    };

    const HOUR_MS: i64 = 3_600_000;

    fn key(byte: u8, not_after_ms: i64) -> TicketKey {
        TicketKey {
            id: [byte; 16],
            secret: [byte ^ 0x5a; 32],
            not_after_ms,
        }
    }

    /// Standard base64 with padding (no crate for it in the workspace).
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    let index = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap();
                    out.push(char::from(ALPHABET[index]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn the_test_base64_is_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn round_trip_with_shared_keys() {
        let t = SharedTicketer::new().unwrap();
        t.set_keys(vec![key(1, now_ms() + HOUR_MS)]);
        assert_eq!(t.shared_key_count(), 1);
        assert!(t.enabled());
        assert_eq!(t.lifetime(), 21_600);
        let plains: [&[u8]; 4] = [b"", b"x", b"hello world", &[7u8; 300]];
        for plain in plains {
            let ticket = t.encrypt(plain).unwrap();
            assert_eq!(ticket.len(), MIN_TICKET_LEN + plain.len());
            assert_eq!(ticket[..16], [1u8; 16]);
            assert_eq!(t.decrypt(&ticket).as_deref(), Some(plain));
        }
        // Random nonces: the same plaintext seals differently.
        assert_ne!(t.encrypt(b"same").unwrap(), t.encrypt(b"same").unwrap());
    }

    #[test]
    fn two_gateways_with_the_same_keys_open_each_others_tickets() {
        let keys = vec![key(1, now_ms() + HOUR_MS), key(2, now_ms() + 2 * HOUR_MS)];
        let a = SharedTicketer::new().unwrap();
        let b = SharedTicketer::new().unwrap();
        a.set_keys(keys.clone());
        // Order on the wire does not matter.
        b.set_keys(keys.into_iter().rev().collect());
        let from_a = a.encrypt(b"issued by a").unwrap();
        let from_b = b.encrypt(b"issued by b").unwrap();
        assert_eq!(from_a[..16], [2u8; 16], "the newest key seals");
        assert_eq!(from_b[..16], [2u8; 16]);
        assert_eq!(b.decrypt(&from_a).unwrap(), b"issued by a");
        assert_eq!(a.decrypt(&from_b).unwrap(), b"issued by b");
    }

    #[test]
    fn another_key_set_cannot_open() {
        let a = SharedTicketer::new().unwrap();
        let b = SharedTicketer::new().unwrap();
        a.set_keys(vec![key(1, now_ms() + HOUR_MS)]);
        b.set_keys(vec![key(9, now_ms() + HOUR_MS)]);
        let ticket = a.encrypt(b"secret session").unwrap();
        assert_eq!(b.decrypt(&ticket), None);
        // Same id, another secret (a key the control API regenerated).
        let c = SharedTicketer::new().unwrap();
        let mut forged = key(1, now_ms() + HOUR_MS);
        forged.secret = [0xee; 32];
        c.set_keys(vec![forged]);
        assert_eq!(c.decrypt(&ticket), None);
    }

    #[test]
    fn rotation_keeps_old_tickets_and_seals_with_the_new_key() {
        let now = now_ms();
        let old = key(1, now + HOUR_MS);
        let new = key(2, now + 2 * HOUR_MS);
        let t = SharedTicketer::new().unwrap();
        t.set_keys(vec![old.clone()]);
        let before = t.encrypt(b"before").unwrap();
        assert_eq!(before[..16], old.id);
        t.set_keys(vec![old.clone(), new.clone()]);
        assert_eq!(t.shared_key_count(), 2);
        let after = t.encrypt(b"after").unwrap();
        assert_eq!(after[..16], new.id);
        assert_eq!(t.decrypt(&before).unwrap(), b"before");
        assert_eq!(t.decrypt(&after).unwrap(), b"after");
        // The old key dropped from the set: its tickets stop resuming.
        t.set_keys(vec![new]);
        assert_eq!(t.decrypt(&before), None);
        assert_eq!(t.decrypt(&after).unwrap(), b"after");
    }

    #[test]
    fn an_expired_key_neither_seals_nor_opens() {
        let now = now_ms();
        let short = key(1, now + 1_000);
        let long = key(2, now + HOUR_MS);
        let t = SharedTicketer::new().unwrap();
        t.set_keys_at(vec![short.clone()], now);
        let by_short = t.encrypt_at(b"short", now).unwrap();
        assert_eq!(by_short[..16], short.id);
        t.set_keys_at(vec![short.clone(), long.clone()], now);
        // The key that lasts longest seals; the other still opens.
        let by_long = t.encrypt_at(b"long", now).unwrap();
        assert_eq!(by_long[..16], long.id);
        assert_eq!(t.decrypt_at(&by_short, now).unwrap(), b"short");
        // Past its end (judged when called, not when set), the short key's
        // tickets no longer open; the long key's do.
        let past = now + 2_000;
        assert_eq!(t.decrypt_at(&by_short, past), None);
        assert_eq!(t.decrypt_at(&by_long, past).unwrap(), b"long");
        assert_eq!(t.encrypt_at(b"x", past).unwrap()[..16], long.id);

        // Every shared key expired after being set: per-process tickets,
        // never one sealed with an expired key.
        let t = SharedTicketer::new().unwrap();
        t.set_keys_at(vec![short.clone()], now);
        let local = t.encrypt_at(b"local", past).unwrap();
        assert_ne!(local[..16], short.id);
        assert_eq!(t.decrypt_at(&local, past).unwrap(), b"local");
        assert_eq!(t.decrypt_at(&by_short, past), None);

        // A key already expired when set is dropped.
        let t = SharedTicketer::new().unwrap();
        t.set_keys(vec![key(3, now_ms() - 1), long.clone()]);
        assert_eq!(t.shared_key_count(), 1);
        assert_eq!(t.encrypt(b"x").unwrap()[..16], long.id);
        // Only expired keys: per-process tickets.
        t.set_keys(vec![key(3, now_ms() - 1)]);
        assert_eq!(t.shared_key_count(), 0);
        let ticket = t.encrypt(b"local").unwrap();
        assert_ne!(ticket[..16], [3u8; 16]);
        assert_eq!(t.decrypt(&ticket).unwrap(), b"local");
    }

    #[test]
    fn garbage_short_truncated_and_flipped_tickets_do_not_open() {
        let t = SharedTicketer::new().unwrap();
        let k = key(1, now_ms() + HOUR_MS);
        t.set_keys(vec![k.clone()]);
        assert_eq!(t.decrypt(&[]), None);
        for len in 1..=60usize {
            assert_eq!(t.decrypt(&vec![0u8; len]), None, "zeros, {len}");
            assert_eq!(t.decrypt(&vec![0xffu8; len]), None, "ones, {len}");
            // Starting with a current key's id, then garbage.
            let mut named: Vec<u8> = k.id.iter().copied().cycle().take(len).collect();
            if len > 16 {
                named[16..].fill(0xa5);
            }
            assert_eq!(t.decrypt(&named), None, "named, {len}");
        }
        let ticket = t.encrypt(b"a session worth stealing").unwrap();
        for len in 0..ticket.len() {
            assert_eq!(t.decrypt(&ticket[..len]), None, "truncated to {len}");
        }
        let mut longer = ticket.clone();
        longer.push(0);
        assert_eq!(t.decrypt(&longer), None);
        for byte in 0..ticket.len() {
            for bit in 0..8 {
                let mut flipped = ticket.clone();
                flipped[byte] ^= 1 << bit;
                assert_eq!(t.decrypt(&flipped), None, "bit {bit} of byte {byte}");
            }
        }
        // With no shared keys (the fallback) too.
        let t = SharedTicketer::new().unwrap();
        assert_eq!(t.decrypt(&[]), None);
        for len in 1..=60usize {
            assert_eq!(t.decrypt(&vec![0u8; len]), None);
        }
        let local = t.encrypt(b"local").unwrap();
        for len in 0..local.len() {
            assert_eq!(t.decrypt(&local[..len]), None);
        }
        assert_eq!(t.decrypt(&ticket), None);
    }

    #[test]
    fn without_keys_tickets_are_per_process() {
        let a = SharedTicketer::new().unwrap();
        let b = SharedTicketer::new().unwrap();
        assert_eq!(a.shared_key_count(), 0);
        let ticket = a.encrypt(b"local").unwrap();
        assert_eq!(a.decrypt(&ticket).unwrap(), b"local");
        assert_eq!(b.decrypt(&ticket), None);
        // Per-process tickets issued before the keys came keep resuming.
        a.set_keys(vec![key(1, now_ms() + HOUR_MS)]);
        assert_eq!(a.decrypt(&ticket).unwrap(), b"local");
        let shared = a.encrypt(b"shared").unwrap();
        // An empty set: back to per-process tickets; shared ones stop.
        a.set_keys(Vec::new());
        assert_eq!(a.shared_key_count(), 0);
        assert_eq!(a.decrypt(&shared), None);
        let again = a.encrypt(b"local again").unwrap();
        assert_ne!(again[..16], [1u8; 16]);
        assert_eq!(a.decrypt(&again).unwrap(), b"local again");
    }

    #[test]
    fn from_wire_parses_and_refuses_without_quoting_the_secret() {
        let id = "00112233445566778899aabbccddeeff";
        let secret_bytes: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 7 + 3).unwrap());
        let secret = hex(&secret_bytes);
        let parsed = TicketKey::from_wire(id, &secret, 42).unwrap();
        assert_eq!(parsed.id_hex(), id);
        assert_eq!(parsed.secret, secret_bytes);
        assert_eq!(parsed.not_after_ms, 42);

        let upper = secret.to_ascii_uppercase();
        let b64 = base64(&secret_bytes);
        let short = &secret[..62];
        let long = format!("{secret}00");
        let not_hex = format!("{}zz", &secret[..62]);
        let cases: [(&str, &str, TicketKeyError); 9] = [
            (id, upper.as_str(), TicketKeyError::SecretNotHex),
            (id, b64.as_str(), TicketKeyError::SecretLength { len: 44 }),
            (id, short, TicketKeyError::SecretLength { len: 62 }),
            (id, long.as_str(), TicketKeyError::SecretLength { len: 66 }),
            (id, not_hex.as_str(), TicketKeyError::SecretNotHex),
            (id, "", TicketKeyError::SecretLength { len: 0 }),
            (
                "00112233445566778899AABBCCDDEEFF",
                secret.as_str(),
                TicketKeyError::IdNotHex,
            ),
            ("0011", secret.as_str(), TicketKeyError::IdLength { len: 4 }),
            (
                "00112233445566778899aabbccddeefg",
                secret.as_str(),
                TicketKeyError::IdNotHex,
            ),
        ];
        for (id, bad, expected) in cases {
            let err = TicketKey::from_wire(id, bad, 0).unwrap_err();
            assert_eq!(err, expected);
            let text = format!("{err} {err:?}");
            assert!(bad.is_empty() || !text.contains(bad), "{text}");
            for form in [&secret, &upper, &b64] {
                assert!(!text.contains(form.as_str()), "{text}");
            }
        }
        // A multi-byte character where hex should be: refused, no panic.
        let mut odd = secret.clone();
        odd.replace_range(0..2, "é");
        assert_eq!(
            TicketKey::from_wire(id, &odd, 0).unwrap_err(),
            TicketKeyError::SecretNotHex
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let k = TicketKey {
            id: [0x11; 16],
            secret: std::array::from_fn(|i| u8::try_from(i * 5 + 1).unwrap()),
            not_after_ms: 1_234,
        };
        let t = SharedTicketer::new().unwrap();
        let mut current = k.clone();
        current.not_after_ms = now_ms() + HOUR_MS;
        t.set_keys(vec![current]);
        for text in [format!("{k:?}"), format!("{k:#?}"), format!("{t:?}")] {
            assert!(text.contains(&"11".repeat(16)), "{text}");
            assert!(!text.contains(&base64(&k.secret)), "{text}");
            assert!(!text.contains(&hex(&k.secret)), "{text}");
            assert!(!text.contains(&format!("{:?}", k.secret)), "{text}");
            assert!(!text.contains("secret"), "{text}");
        }
        assert!(format!("{k:?}").contains("1234"));
        assert!(format!("{t:?}").contains("shared_keys: 1"));
    }

    // Real handshakes: a client that got a ticket from one server resumes
    // at another server with the same keys, and not at one with others.

    const NAME: &str = "gw.example";

    /// Moves what `from` has to send into `to`; whether anything moved.
    fn transfer(from: &mut Connection, to: &mut Connection) -> bool {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        if buf.is_empty() {
            return false;
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets().unwrap();
        }
        true
    }

    fn connect(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> HandshakeKind {
        let name = ServerName::try_from(NAME).unwrap();
        let mut c = Connection::from(ClientConnection::new(client.clone(), name).unwrap());
        let mut s = Connection::from(ServerConnection::new(server.clone()).unwrap());
        // Until quiet: the handshake, then the server's NewSessionTickets.
        let mut rounds = 0;
        loop {
            let sent = transfer(&mut c, &mut s);
            let received = transfer(&mut s, &mut c);
            if !sent && !received {
                break;
            }
            rounds += 1;
            assert!(rounds < 32, "the handshake does not settle");
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let kind = c.handshake_kind().unwrap();
        assert_eq!(s.handshake_kind(), Some(kind));
        kind
    }

    #[test]
    fn a_ticket_from_one_server_resumes_at_another_with_the_same_keys() {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec![NAME.to_string()]).unwrap();
        let resolver = ReloadableCert::new(
            certified_key(
                cert.pem().as_bytes(),
                signing_key.serialize_pem().as_bytes(),
            )
            .unwrap(),
        );

        let keys = vec![key(1, now_ms() + HOUR_MS), key(2, now_ms() + 2 * HOUR_MS)];
        let ticketer_a = SharedTicketer::new().unwrap();
        ticketer_a.set_keys(keys.clone());
        let ticketer_b = SharedTicketer::new().unwrap();
        ticketer_b.set_keys(keys);
        let ticketer_c = SharedTicketer::new().unwrap();
        ticketer_c.set_keys(vec![key(7, now_ms() + 2 * HOUR_MS)]);
        let server_a = server_config_with_tickets(resolver.clone(), ticketer_a).unwrap();
        let server_b = server_config_with_tickets(resolver.clone(), ticketer_b).unwrap();
        let server_c = server_config_with_tickets(resolver.clone(), ticketer_c).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let mut client = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(32)));
        let client = Arc::new(client);

        assert_eq!(connect(&client, &server_a), HandshakeKind::Full);
        assert_eq!(connect(&client, &server_b), HandshakeKind::Resumed);
        assert_eq!(connect(&client, &server_c), HandshakeKind::Full);
        // C's ticket does not resume at A, and A's still do.
        assert_eq!(connect(&client, &server_a), HandshakeKind::Full);
        assert_eq!(connect(&client, &server_a), HandshakeKind::Resumed);
    }
}

//! Proof that a tenant controls a custom hostname, before it serves.
//!
//! A custom hostname gets a random token when it is added. Its owner
//! proves control with either
//! - a DNS TXT record `_gannet-challenge.<hostname>` holding the token, or
//! - the token at `http://<hostname>/.well-known/gannet-challenge/<token>`,
//!   which every gateway answers once it has the revision carrying it (so
//!   pointing the name at the platform is enough);
//!
//! or, for a managed certificate, by the CA's HTTP-01 validation at the
//! gateways ([`crate::acme`]). Until then the hostname serves nothing but
//! those tokens, at every PoP. The control API checks ([`check`]) when the
//! tenant asks (`gannet domains verify`) and in the background
//! ([`worker`]) with a back-off; the HTTP check waits until the gateways
//! seen recently have ACKed the token. Its DNS server and HTTP port are
//! settings, and it connects only to public addresses unless told
//! otherwise. Hostnames claimed before proofs existed are kept (`legacy`)
//! and listed for operators (`gannet admin domains list --legacy`), who
//! can also vouch for a hostname (`gannet admin domains verify`).

pub mod check;
pub mod store;
pub mod worker;

/// A new hostname's token: 16 random bytes, hex.
pub fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

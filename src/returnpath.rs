//! The return path sidestep owns: each outbound attempt's MAIL FROM is
//! `b-TOKEN@bounce-domain`, and TOKEN names the queue id, the recipient's index, the
//! attempt and the egress IP, authenticated by an HMAC (SHA-256, with `[bounces]
//! secret_file`) that also covers the recipient's address. A bounce that comes back days
//! later, after the message left the spool, names what drew it; a forged one names
//! nothing (guessing a 72-bit tag).
//!
//! A reload may bring a new secret (a rotation): the previous key keeps verifying for
//! `[bounces] keep_sent`, as long as the sent records it would resolve against are kept,
//! so the bounces of mail sent before the rotation are still read. Only in memory: a
//! restart forgets the previous keys.
//!
//! Encoding: lowercase base32 without padding. Receivers and forwarders may fold the
//! local part's case (RFC 5321 says they must not; some do), and base32 survives that;
//! the local part stays within RFC 5321's 64 octets: 44 characters for an IPv4 egress,
//! 63 for IPv6. Measured (benches/micro.rs `verp_token`): a make and a verify cost a few
//! microseconds together, against the milliseconds of the SMTP transaction.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ring::hmac;

use crate::clock::Clock;
use crate::config::BouncesConfig;
use crate::envelope::{Address, Sender};

/// What every token starts with: bounces for other local parts are not ours.
pub const PREFIX: &str = "b-";

/// Bytes of the HMAC kept (72 bits).
const TAG_LEN: usize = 9;

/// Bytes of a generated queue id (20 hex digits).
const ID_LEN: usize = 10;

/// Domain separation: this key signs nothing else.
const CONTEXT: &[u8] = b"sidestep verp v1";

/// What a key signs to name itself (see [`ReturnPath::key_id`]).
const KEY_ID: &[u8] = b"sidestep verp key id";

/// The return path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReturnPathError {
    /// The secret file cannot be read.
    #[error("[bounces] secret_file {path}: {source}")]
    Secret {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `[bounces] domain` is set without a secret.
    #[error("[bounces] secret_file is required with a bounce domain")]
    NoSecret,
    /// The secret is too short to authenticate anything.
    #[error("[bounces] secret_file: 16 bytes at least")]
    ShortSecret,
}

/// What a token says about one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The queue id (20 hex digits, as generated).
    pub queue_id: String,
    /// The recipient's index in the message's recipient list.
    pub recipient: u16,
    /// The attempt number (the message's attempts before this one, modulo 256).
    pub attempt: u8,
    /// The egress IP the attempt left from; none through a smarthost.
    pub egress: Option<IpAddr>,
}

/// A token read from a local part whose tag is not checked yet: the tag covers the
/// recipient's address, which the caller finds (from the sent record, or the bounce).
#[derive(Debug, Clone)]
pub struct Unverified {
    /// What it claims.
    pub token: Token,
    payload: Vec<u8>,
    tag: Vec<u8>,
}

/// The key and the bounce domains.
pub struct ReturnPath {
    key: hmac::Key,
    /// Names the secret without keeping it: whether a reload changed it.
    key_id: [u8; 16],
    /// Keys of earlier secrets, each verifying until its Unix second: a rotation must
    /// not orphan the bounces of mail already sent.
    previous: Vec<Retired>,
    domain: String,
    per_sender: Vec<(String, String)>,
    /// When a previous key stops verifying.
    clock: Clock,
}

/// A key a rotation replaced, still verifying for a while.
#[derive(Clone)]
struct Retired {
    key: hmac::Key,
    id: [u8; 16],
    /// Unix seconds: verifies before this.
    until: u64,
}

impl ReturnPath {
    /// The return path of `[bounces]`, none when it is off; `clock` tells when a
    /// previous key stops verifying.
    ///
    /// # Errors
    /// The secret file is missing, unreadable or too short.
    pub fn from_config(c: &BouncesConfig, clock: Clock) -> Result<Option<Self>, ReturnPathError> {
        let Some(domain) = &c.domain else {
            return Ok(None);
        };
        let path = c.secret_file.as_ref().ok_or(ReturnPathError::NoSecret)?;
        let secret = std::fs::read(path).map_err(|source| ReturnPathError::Secret {
            path: path.clone(),
            source,
        })?;
        if secret.len() < 16 {
            return Err(ReturnPathError::ShortSecret);
        }
        Ok(Some(
            Self::new(
                &secret,
                domain,
                c.domains
                    .iter()
                    .map(|d| (d.sender.clone(), d.domain.clone()))
                    .collect(),
            )
            .with_clock(clock),
        ))
    }

    /// A return path keyed with `secret`, on `domain`, with per-sender domains (on the
    /// system clock).
    pub fn new(secret: &[u8], domain: &str, per_sender: Vec<(String, String)>) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        Self {
            key_id: key_id(&key),
            key,
            previous: Vec::new(),
            domain: domain.to_ascii_lowercase(),
            per_sender: per_sender
                .into_iter()
                .map(|(s, d)| (s.to_ascii_lowercase(), d.to_ascii_lowercase()))
                .collect(),
            clock: Clock::system(),
        }
    }

    /// The same return path on another clock (tests use a manual one).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// `next` (a reloaded `[bounces]`) after this one: when the secret changed, this
    /// key keeps verifying for `keep` (`[bounces] keep_sent`, how long the sent records
    /// are kept); earlier keys keep their own deadlines. A rotation back to an earlier
    /// secret makes it current again.
    pub fn succeeded_by(&self, mut next: ReturnPath, keep: Duration) -> ReturnPath {
        let now = self.clock.now();
        next.previous = self
            .previous
            .iter()
            .filter(|r| r.until > now && r.id != next.key_id)
            .cloned()
            .collect();
        if self.key_id != next.key_id {
            next.previous.push(Retired {
                key: self.key.clone(),
                id: self.key_id,
                until: now.saturating_add(keep.as_secs()),
            });
        }
        next
    }

    /// Whether `next` is keyed with another secret than this one.
    pub fn rotated_in(&self, next: &ReturnPath) -> bool {
        self.key_id != next.key_id
    }

    /// The bounce domain for mail from `sender`: its own return-path domain, else the
    /// default one. A null sender keeps its null path (a bounce never bounces).
    pub fn domain_for(&self, sender: &Sender) -> Option<&str> {
        let Sender::Address(a) = sender else {
            return None;
        };
        let from = a.domain();
        Some(
            self.per_sender
                .iter()
                .find(|(s, _)| s.eq_ignore_ascii_case(from))
                .map_or(self.domain.as_str(), |(_, d)| d.as_str()),
        )
    }

    /// The VERP address for one recipient of one attempt, on `domain`; none when the
    /// queue id is not one sidestep generated (an operator's hand-made id).
    pub fn address(&self, token: &Token, rcpt: &str, domain: &str) -> Option<String> {
        let mut bytes = payload(token)?;
        let tag = self.tag(&bytes, rcpt);
        bytes.extend_from_slice(&tag);
        let mut text = String::with_capacity(PREFIX.len() + 64 + 1 + domain.len());
        text.push_str(PREFIX);
        text.push_str(
            &data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase(),
        );
        text.push('@');
        text.push_str(domain);
        Some(text)
    }

    /// Reads the token of a bounce address's local part (any case); none when it is not
    /// a token's shape. The tag is checked by [`ReturnPath::verify`].
    pub fn read(local_part: &str) -> Option<Unverified> {
        let text = local_part
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .and(local_part.get(PREFIX.len()..))?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(text.to_ascii_uppercase().as_bytes())
            .ok()?;
        let ip_len = bytes.len().checked_sub(ID_LEN + 3 + TAG_LEN)?;
        let egress = match ip_len {
            4 => {
                let o: [u8; 4] = bytes[ID_LEN + 3..ID_LEN + 7].try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(o))).filter(|ip| !ip.is_unspecified())
            }
            16 => {
                let o: [u8; 16] = bytes[ID_LEN + 3..ID_LEN + 19].try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => return None,
        };
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let queue_id: String = payload[..ID_LEN]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        Some(Unverified {
            token: Token {
                queue_id,
                recipient: u16::from_be_bytes([payload[ID_LEN], payload[ID_LEN + 1]]),
                attempt: payload[ID_LEN + 2],
                egress,
            },
            payload: payload.to_vec(),
            tag: tag.to_vec(),
        })
    }

    /// Whether `t` was made for recipient `rcpt` by this key, or by a previous one
    /// still kept (constant time per key).
    pub fn verify(&self, t: &Unverified, rcpt: &str) -> bool {
        let mut data = Vec::with_capacity(CONTEXT.len() + t.payload.len() + rcpt.len());
        data.extend_from_slice(CONTEXT);
        data.extend_from_slice(&t.payload);
        data.extend_from_slice(rcpt.to_ascii_lowercase().as_bytes());
        if tag_matches(&self.key, &data, &t.tag) {
            return true;
        }
        if self.previous.is_empty() {
            return false;
        }
        let now = self.clock.now();
        self.previous
            .iter()
            .any(|r| now < r.until && tag_matches(&r.key, &data, &t.tag))
    }

    fn tag(&self, payload: &[u8], rcpt: &str) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(CONTEXT);
        ctx.update(payload);
        ctx.update(rcpt.to_ascii_lowercase().as_bytes());
        let full = ctx.sign();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }
}

/// Whether `key` signs `data` with `tag` (every byte compared whatever the first
/// difference).
fn tag_matches(key: &hmac::Key, data: &[u8], tag: &[u8]) -> bool {
    let full = hmac::sign(key, data);
    let mine = &full.as_ref()[..TAG_LEN];
    mine.len() == tag.len() && mine.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// A name for the key: what it signs for [`KEY_ID`] (the secret itself is not kept).
fn key_id(key: &hmac::Key) -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(&hmac::sign(key, KEY_ID).as_ref()[..16]);
    id
}

/// The token's bytes before the tag; none for a queue id that is not 20 hex digits.
fn payload(t: &Token) -> Option<Vec<u8>> {
    let id = t.queue_id.as_bytes();
    if id.len() != 2 * ID_LEN {
        return None;
    }
    let mut bytes = Vec::with_capacity(ID_LEN + 3 + 16 + TAG_LEN);
    for pair in id.chunks(2) {
        let hex = std::str::from_utf8(pair).ok()?;
        bytes.push(u8::from_str_radix(hex, 16).ok()?);
    }
    bytes.extend_from_slice(&t.recipient.to_be_bytes());
    bytes.push(t.attempt);
    match t.egress {
        Some(IpAddr::V4(v4)) => bytes.extend_from_slice(&v4.octets()),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => bytes.extend_from_slice(&v4.octets()),
            None => bytes.extend_from_slice(&v6.octets()),
        },
        None => bytes.extend_from_slice(&[0; 4]),
    }
    Some(bytes)
}

/// Whether `a` is a return-path address's shape (for a quick look before a lookup).
pub fn is_token_address(a: &Address) -> bool {
    a.local_part()
        .get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp() -> ReturnPath {
        ReturnPath::new(
            b"0123456789abcdef-secret",
            "Bounces.Example.NET",
            vec![("example.com".into(), "rp.example.com".into())],
        )
    }

    fn token(egress: Option<IpAddr>) -> Token {
        Token {
            queue_id: "0006400A1B2C3D001ABC".into(),
            recipient: 3,
            attempt: 2,
            egress,
        }
    }

    #[test]
    fn a_token_reads_back_and_verifies_for_its_recipient_only() {
        let rp = rp();
        for egress in [
            Some("192.0.2.11".parse().unwrap()),
            Some("2001:db8::25".parse().unwrap()),
            None,
        ] {
            let t = token(egress);
            let address = rp
                .address(&t, "Bob@Dest.test", "bounces.example.net")
                .unwrap();
            let (local, domain) = address.rsplit_once('@').unwrap();
            assert_eq!(domain, "bounces.example.net");
            assert!(local.len() <= 64, "{local} is {} octets", local.len());
            assert_eq!(local, local.to_ascii_lowercase(), "lowercase only");
            // A receiver that folds the case changes nothing.
            let read = ReturnPath::read(&local.to_ascii_uppercase()).unwrap();
            assert_eq!(read.token, t);
            assert!(rp.verify(&read, "bob@dest.test"));
            assert!(!rp.verify(&read, "eve@dest.test"), "another recipient");
            let other = ReturnPath::new(b"another-secret-of-16", "x.test", Vec::new());
            assert!(!other.verify(&read, "bob@dest.test"), "another key");
        }
    }

    #[test]
    fn a_changed_character_fails_the_tag() {
        let rp = rp();
        let t = token(Some("192.0.2.11".parse().unwrap()));
        let address = rp.address(&t, "bob@dest.test", "b.test").unwrap();
        let local = address.split('@').next().unwrap();
        let mut forged: Vec<char> = local.chars().collect();
        let i = 10;
        forged[i] = if forged[i] == 'a' { 'b' } else { 'a' };
        let forged: String = forged.into_iter().collect();
        if let Some(read) = ReturnPath::read(&forged) {
            assert!(!rp.verify(&read, "bob@dest.test"));
        }
        assert!(ReturnPath::read("b-short").is_none());
        assert!(ReturnPath::read("postmaster").is_none());
        assert!(ReturnPath::read("b-!!!!").is_none());
    }

    #[test]
    fn a_rotated_secret_keeps_verifying_the_previous_one_for_keep_sent() {
        let clock = Clock::manual(1_000_000_000);
        let keep = Duration::from_secs(30 * 86_400);
        let key = |secret: &[u8]| {
            ReturnPath::new(secret, "bounces.test", Vec::new()).with_clock(clock.clone())
        };
        let read = |rp: &ReturnPath, t: &Token| {
            let address = rp.address(t, "bob@dest.test", "bounces.test").unwrap();
            ReturnPath::read(address.split('@').next().unwrap()).unwrap()
        };
        let first = key(b"the first secret, 16 bytes and more");
        let t = token(Some("192.0.2.11".parse().unwrap()));
        let before = read(&first, &t);

        // The operator rotates the secret and reloads.
        let second = first.succeeded_by(key(b"the second secret, 16 bytes and more"), keep);
        assert!(first.rotated_in(&second));
        let after = read(&second, &t);
        assert!(
            !first.verify(&after, "bob@dest.test"),
            "made with the new key"
        );
        assert!(second.verify(&after, "bob@dest.test"));
        assert!(
            second.verify(&before, "bob@dest.test"),
            "the previous key verifies"
        );
        assert!(
            !second.verify(&before, "eve@dest.test"),
            "for its recipient only"
        );

        // A later reload with the same secret keeps the previous key's deadline.
        clock.advance(Duration::from_secs(86_400));
        let same = second.succeeded_by(key(b"the second secret, 16 bytes and more"), keep);
        assert!(!second.rotated_in(&same));
        clock.advance(keep - Duration::from_secs(86_400 + 1));
        assert!(
            same.verify(&before, "bob@dest.test"),
            "a second before keep_sent"
        );
        clock.advance(Duration::from_secs(1));
        assert!(!same.verify(&before, "bob@dest.test"), "keep_sent elapsed");
        assert!(
            same.verify(&after, "bob@dest.test"),
            "the current key still does"
        );

        // Rotating back to the first secret makes it current again, for good.
        let back = same.succeeded_by(key(b"the first secret, 16 bytes and more"), keep);
        clock.advance(keep * 2);
        assert!(back.verify(&before, "bob@dest.test"));
        assert!(
            !back.verify(&after, "bob@dest.test"),
            "the second one expired"
        );
    }

    #[test]
    fn each_sender_gets_its_return_path_domain() {
        let rp = rp();
        let from = |s: &str| Sender::Address(Address::parse(s, false).unwrap());
        assert_eq!(
            rp.domain_for(&from("news@example.com")),
            Some("rp.example.com")
        );
        assert_eq!(
            rp.domain_for(&from("a@other.test")),
            Some("bounces.example.net")
        );
        assert_eq!(rp.domain_for(&Sender::Null), None);
        let hand_made = Token {
            queue_id: "typed-by-hand".into(),
            ..token(None)
        };
        assert_eq!(rp.address(&hand_made, "b@c.test", "b.test"), None);
    }
}

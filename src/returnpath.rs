//! The return path sidestep owns: each outbound attempt's MAIL FROM is
//! `b-TOKEN@bounce-domain`, and TOKEN names the queue id, the recipient's index, the
//! attempt and the egress IP, authenticated by an HMAC (SHA-256, with `[bounces]
//! secret_file`) that also covers the recipient's address. A bounce that comes back days
//! later, after the message left the spool, names what drew it; a forged one names
//! nothing (guessing a 72-bit tag).
//!
//! Encoding: lowercase base32 without padding. Receivers and forwarders may fold the
//! local part's case (RFC 5321 says they must not; some do), and base32 survives that;
//! the local part stays within RFC 5321's 64 octets: 44 characters for an IPv4 egress,
//! 63 for IPv6. Measured (benches/micro.rs `verp_token`): a make and a verify cost a few
//! microseconds together, against the milliseconds of the SMTP transaction.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ring::hmac;

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
    domain: String,
    per_sender: Vec<(String, String)>,
}

impl ReturnPath {
    /// The return path of `[bounces]`, none when it is off.
    ///
    /// # Errors
    /// The secret file is missing, unreadable or too short.
    pub fn from_config(c: &BouncesConfig) -> Result<Option<Self>, ReturnPathError> {
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
        Ok(Some(Self::new(
            &secret,
            domain,
            c.domains
                .iter()
                .map(|d| (d.sender.clone(), d.domain.clone()))
                .collect(),
        )))
    }

    /// A return path keyed with `secret`, on `domain`, with per-sender domains.
    pub fn new(secret: &[u8], domain: &str, per_sender: Vec<(String, String)>) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            domain: domain.to_ascii_lowercase(),
            per_sender: per_sender
                .into_iter()
                .map(|(s, d)| (s.to_ascii_lowercase(), d.to_ascii_lowercase()))
                .collect(),
        }
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

    /// Whether `t` was made by this key for recipient `rcpt` (constant time).
    pub fn verify(&self, t: &Unverified, rcpt: &str) -> bool {
        let mut data = Vec::with_capacity(CONTEXT.len() + t.payload.len() + rcpt.len());
        data.extend_from_slice(CONTEXT);
        data.extend_from_slice(&t.payload);
        data.extend_from_slice(rcpt.to_ascii_lowercase().as_bytes());
        let full = hmac::sign(&self.key, &data);
        // Constant time: every byte is compared whatever the first difference.
        let mine = &full.as_ref()[..TAG_LEN];
        mine.len() == t.tag.len()
            && mine
                .iter()
                .zip(&t.tag)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
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

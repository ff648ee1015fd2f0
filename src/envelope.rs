//! The envelope: who a message is from and to whom it goes. These types travel the whole
//! pipeline, from the inbound session to the DSN.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A mailbox `local@domain`. The domain is kept lower-cased because routing keys on it;
/// the local part is kept as given (RFC 5321 §2.4: only the destination may interpret it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    local: String,
    domain: String,
}

/// Why an address from a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address has no domain")]
    /// No `@domain` part.
    NoDomain,
    #[error("invalid domain")]
    /// The domain is not a valid host name.
    BadDomain,
    #[error("invalid local part")]
    /// The local part is not valid (RFC 5321 §4.1.2).
    BadLocalPart,
    #[error("address literals are not supported")]
    /// An address literal (`user@[192.0.2.1]`): not relayed.
    Literal,
    #[error("non-ASCII address without SMTPUTF8")]
    /// Non-ASCII, but the transaction did not ask for SMTPUTF8.
    NeedsUtf8,
}

impl Address {
    /// Builds an address from the path smtp-proto parsed. smtp-proto has already removed
    /// the quotes of a quoted local part (`"a@b"@c` arrives as `a@b@c`), so the domain is
    /// what follows the *last* `@`; [`Address::fmt`] puts the quotes back.
    ///
    /// # Errors
    /// The address lacks a domain, or the domain or local part is malformed.
    pub fn parse(path: &str, smtputf8: bool) -> Result<Self, AddressError> {
        let (local, domain) = path.rsplit_once('@').ok_or(AddressError::NoDomain)?;
        if domain.starts_with('[') {
            return Err(AddressError::Literal);
        }
        if !smtputf8 && !path.is_ascii() {
            return Err(AddressError::NeedsUtf8);
        }
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if !is_valid_domain(domain) {
            return Err(AddressError::BadDomain);
        }
        if local.is_empty() || local.len() > 64 || local.chars().any(|c| c.is_control()) {
            return Err(AddressError::BadLocalPart);
        }
        Ok(Self {
            local: local.to_string(),
            domain: domain.to_lowercase(),
        })
    }

    /// The destination domain: the key for MX lookup and per-domain limits.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The part before the `@`.
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// Whether the local part can be written without quotes (RFC 5321 `Dot-string`).
    fn local_is_dot_atom(&self) -> bool {
        const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
        !self.local.starts_with('.')
            && !self.local.ends_with('.')
            && !self.local.contains("..")
            && self
                .local
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || SPECIALS.contains(c) || !c.is_ascii())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.local_is_dot_atom() {
            write!(f, "{}@{}", self.local, self.domain)
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            write!(f, "\"@{}", self.domain)
        }
    }
}

/// Whether `name` is a syntactically valid host name (RFC 1035 labels, or U-labels for
/// SMTPUTF8). A single label is accepted: test and internal domains use them.
pub fn is_valid_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| {
                    c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric())
                })
        })
}

/// The reverse path: a sender address, or the null sender `<>` of bounces, which must
/// never itself receive a bounce (RFC 5321 §4.5.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sender {
    /// The null reverse path `<>` (DSNs): never gets a DSN itself.
    Null,
    /// A real sender, who gets DSNs.
    Address(Address),
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sender::Null => Ok(()),
            Sender::Address(a) => a.fmt(f),
        }
    }
}

/// Body type and options the client declared in MAIL FROM, passed on to the next hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyFlags {
    /// `BODY=8BITMIME` (RFC 6152).
    pub eight_bit: bool,
    /// `SMTPUTF8` (RFC 6531): addresses or headers may be UTF-8.
    pub smtputf8: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let cases = [
            ("user@Example.TEST", true, "user@example.test"),
            ("user%other@host", true, "user%other@host"),
            ("user@other@host", true, "\"user@other\"@host"),
            ("a b@c", true, "\"a b\"@c"),
            ("jöe@exämple.test", true, "jöe@exämple.test"),
            ("x@dest.test.", true, "x@dest.test"),
        ];
        for (input, utf8, shown) in cases {
            let a = Address::parse(input, utf8).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(a.to_string(), shown, "{input}");
        }
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            Address::parse("postmaster", false),
            Err(AddressError::NoDomain)
        );
        assert_eq!(Address::parse("", false), Err(AddressError::NoDomain));
        assert_eq!(Address::parse("a@-b", false), Err(AddressError::BadDomain));
        assert_eq!(
            Address::parse("a@b..c", false),
            Err(AddressError::BadDomain)
        );
        assert_eq!(
            Address::parse("a@[1.2.3.4]", false),
            Err(AddressError::Literal)
        );
        assert_eq!(Address::parse("@b", false), Err(AddressError::BadLocalPart));
        assert_eq!(
            Address::parse("jöe@x.test", false),
            Err(AddressError::NeedsUtf8)
        );
    }
}

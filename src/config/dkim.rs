//! `[dkim]` and `[compliance]`: what sidestep does to and about the content it accepts.
//! Plain data; the keys themselves are read and checked by the `signing` module.

use std::path::PathBuf;

use serde::Deserialize;

/// `[dkim]`: signing accepted mail with the From: domain's keys.
///
/// TOML cannot have both a `[dkim]` table and a `[[dkim]]` array, so the keys are the
/// table's array: `[dkim] sign = "all"` and `[[dkim.keys]]` entries. A file that lists
/// its keys as `[[dkim]]` entries alone (no `sign` setting) is read too, with the
/// default `sign = "authenticated"`.
#[derive(Debug, Clone, Default)]
pub struct DkimConfig {
    /// Whose mail is signed: `"authenticated"` (mail from users logged in with AUTH) or
    /// `"all"` (also clients in `server.relay_networks`).
    pub sign: SignPolicy,
    /// The keys; several for one domain give several signatures (RSA and Ed25519 side
    /// by side).
    pub keys: Vec<DkimKeyConfig>,
}

/// `[dkim]` as a table (`sign`, `[[dkim.keys]]`), or `[[dkim]]` as the keys alone:
/// each spelling read with its own schema, so a wrong key still gets the schema's
/// message ("unknown field `sing`, expected `sign` or `keys`").
impl<'de> Deserialize<'de> for DkimConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Section;
        impl<'de> serde::de::Visitor<'de> for Section {
            type Value = DkimConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a [dkim] table or [[dkim]] key entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<DkimConfig, A::Error> {
                let t = DkimTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(DkimConfig {
                    sign: t.sign,
                    keys: t.keys,
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<DkimConfig, A::Error> {
                let keys = Vec::<DkimKeyConfig>::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(DkimConfig {
                    sign: SignPolicy::default(),
                    keys,
                })
            }
        }
        d.deserialize_any(Section)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct DkimTable {
    sign: SignPolicy,
    keys: Vec<DkimKeyConfig>,
}

/// Whose mail is signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignPolicy {
    /// Mail from users logged in with AUTH (who proved who they are).
    #[default]
    Authenticated,
    /// All accepted mail, also from `relay_networks` clients (an MTA in front that
    /// vouches for its senders).
    All,
}

/// One `[[dkim.keys]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// The signing domain (`d=`); mail whose From: domain is this one is signed.
    pub domain: String,
    /// The selector (`s=`): the key is published at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The private key, PEM (PKCS#8 or PKCS#1 for RSA, PKCS#8 for Ed25519); readable by
    /// the relay's user only (mode 0600 or stricter).
    pub private_key: PathBuf,
    /// `"rsa-sha256"` or `"ed25519-sha256"`.
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
    /// Also sign mail from subdomains of `domain` (with `d=` the domain itself).
    #[serde(default)]
    pub subdomains: bool,
}

/// A DKIM signing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum DkimAlgorithm {
    /// RSA (2048 bits or more) with SHA-256: what every verifier understands.
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// Ed25519 with SHA-256 (RFC 8463): small and fast, not yet verified everywhere, so
    /// sent beside an RSA signature.
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The name in the `a=` tag and the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::RsaSha256 => "rsa-sha256",
            Self::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The `k=` tag of the published key.
    pub fn key_type(self) -> &'static str {
        match self {
            Self::RsaSha256 => "rsa",
            Self::Ed25519Sha256 => "ed25519",
        }
    }
}

/// `[compliance]`: the bulk-sender rules of the big receivers (Gmail, Yahoo, 2024).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplianceConfig {
    /// Bulk mail (with `List-Id`, `List-Unsubscribe` or `Precedence: bulk|list`) without
    /// one-click unsubscribe (RFC 8058: `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
    /// and an https `List-Unsubscribe` URI): `"warn"` logs and counts it per sender,
    /// `"refuse"` answers the end of DATA with `550 5.7.1`, `"off"` does nothing.
    pub one_click: OneClick,
}

/// What to do with bulk mail that lacks one-click unsubscribe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OneClick {
    /// Log it and count it (`sidestep_bulk_without_one_click_total{sender}`).
    #[default]
    Warn,
    /// Refuse it at the end of DATA; nothing is spooled.
    Refuse,
    /// No check.
    Off,
}

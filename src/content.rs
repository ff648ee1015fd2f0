//! The header block of an accepted message, read once at the end of DATA: what DKIM
//! signing and the bulk-mail check need to know about it.
//!
//! Parsed with mail-parser, told to decode only `From:` and `List-Unsubscribe:` and to
//! skip every other value (names and offsets are kept), so a message costs one pass over
//! its header block and nothing over its body. The few raw values wanted
//! (`DKIM-Signature`, `Precedence`, `List-Unsubscribe-Post`) are sliced from the input.

use std::sync::OnceLock;

use mail_parser::{HeaderName, HeaderValue, MessageParser};

/// What the header block says, owned (the body moves on to the spool).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Headers {
    /// The domain of the first `From:` address, lower case; `None` without one.
    pub from_domain: Option<String>,
    /// Every field name, in order (unknown names keep their spelling).
    pub names: Vec<HeaderName<'static>>,
    /// `(d=, s=)` of each `DKIM-Signature:` already present, lower case.
    pub signatures: Vec<(String, String)>,
    /// A `List-Id:` field is present.
    pub list_id: bool,
    /// The `List-Unsubscribe:` URIs (`None`: no such field).
    pub list_unsubscribe: Option<Vec<String>>,
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` is present (RFC 8058 §3.1).
    pub one_click_post: bool,
    /// `Precedence: bulk` or `Precedence: list`.
    pub precedence_bulk: bool,
}

/// What one-click unsubscribe (RFC 8058) lacks in a bulk message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneClickMissing {
    /// No `List-Unsubscribe-Post: List-Unsubscribe=One-Click` field.
    PostHeader,
    /// No https URI in `List-Unsubscribe:` (mailto only, or no field).
    HttpsUri,
}

impl OneClickMissing {
    /// What the sender has to add, as an operator and a client read it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::PostHeader => "List-Unsubscribe-Post: List-Unsubscribe=One-Click header",
            Self::HttpsUri => "https URI in List-Unsubscribe",
        }
    }
}

impl Headers {
    /// Reads the header block at the start of `message` (CRLF lines, as received).
    pub fn parse(message: &[u8]) -> Self {
        static PARSER: OnceLock<MessageParser> = OnceLock::new();
        let parser = PARSER.get_or_init(|| {
            MessageParser::new()
                .header_address(HeaderName::From)
                .header_address(HeaderName::ListUnsubscribe)
                .default_header_ignore()
        });
        let Some(parsed) = parser.parse_headers(message) else {
            return Self::default();
        };
        let mut h = Self::default();
        for field in parsed.headers() {
            let raw = message
                .get(field.offset_start as usize..field.offset_end as usize)
                .unwrap_or_default();
            match &field.name {
                HeaderName::From if h.from_domain.is_none() => {
                    h.from_domain = field
                        .value
                        .as_address()
                        .and_then(|a| a.first())
                        .and_then(|a| a.address())
                        .and_then(|a| a.rsplit_once('@'))
                        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
                        .filter(|d| !d.is_empty());
                }
                HeaderName::DkimSignature => {
                    if let Ok(s) = mail_auth::dkim::Signature::parse(raw) {
                        h.signatures
                            .push((s.d.to_ascii_lowercase(), s.s.to_ascii_lowercase()));
                    }
                }
                HeaderName::ListId => h.list_id = true,
                HeaderName::ListUnsubscribe => {
                    let uris = h.list_unsubscribe.get_or_insert_with(Vec::new);
                    if let HeaderValue::Address(a) = &field.value {
                        uris.extend(a.iter().filter_map(|a| a.address()).map(str::to_string));
                    }
                }
                HeaderName::ListUnsubscribePost => {
                    // RFC 8058 §3.1: exactly this key=value pair.
                    h.one_click_post |= raw
                        .trim_ascii()
                        .eq_ignore_ascii_case(b"List-Unsubscribe=One-Click");
                }
                HeaderName::Other(name) if name.eq_ignore_ascii_case("Precedence") => {
                    let value = raw.trim_ascii();
                    h.precedence_bulk |=
                        value.eq_ignore_ascii_case(b"bulk") || value.eq_ignore_ascii_case(b"list");
                }
                _ => {}
            }
            h.names.push(field.name.clone().into_owned());
        }
        h
    }

    /// How many fields named `name` there are.
    pub fn count(&self, name: &HeaderName<'_>) -> usize {
        self.names.iter().filter(|n| *n == name).count()
    }

    /// Bulk mail, as Gmail and Yahoo see it: a mailing list's fields or
    /// `Precedence: bulk|list`.
    pub fn is_bulk(&self) -> bool {
        self.list_id || self.list_unsubscribe.is_some() || self.precedence_bulk
    }

    /// For bulk mail, what one-click unsubscribe lacks (the post header first); `None`
    /// for mail that is not bulk or has both.
    pub fn one_click_missing(&self) -> Option<OneClickMissing> {
        if !self.is_bulk() {
            return None;
        }
        if !self.one_click_post {
            return Some(OneClickMissing::PostHeader);
        }
        let https = self.list_unsubscribe.iter().flatten().any(|u| {
            u.get(..8)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        });
        (!https).then_some(OneClickMissing::HttpsUri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Headers {
        Headers::parse(text.as_bytes())
    }

    #[test]
    fn the_from_domain_names_and_existing_signatures() {
        let h = parse(
            "DKIM-Signature: v=1; a=rsa-sha256; d=Example.COM; s=Sel1; h=from; bh=AAAA; b=AAAA\r\n\
             From: \"Ann\" <ann@News.Example.com>\r\nTo: b@dest.test\r\nSubject: hi\r\n\
             X-Mailer: x\r\nFeedback-ID: a:b:c\r\n\r\nFrom: not@a.header\r\n",
        );
        assert_eq!(h.from_domain.as_deref(), Some("news.example.com"));
        assert_eq!(h.signatures, vec![("example.com".into(), "sel1".into())]);
        assert_eq!(h.count(&HeaderName::From), 1);
        assert_eq!(h.count(&HeaderName::Other("feedback-id".into())), 1);
        assert_eq!(h.count(&HeaderName::Cc), 0);
        assert_eq!(h.names.len(), 6);
        assert!(!h.is_bulk());
        assert_eq!(h.one_click_missing(), None);
    }

    #[test]
    fn no_headers_or_no_from_address() {
        assert_eq!(parse("\r\njust a body\r\n").from_domain, None);
        assert_eq!(parse("From: undisclosed\r\n\r\nx\r\n").from_domain, None);
        assert_eq!(parse("").names, Vec::<HeaderName>::new());
    }

    #[test]
    fn bulk_mail_and_what_one_click_lacks() {
        let post = "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";
        let https = "List-Unsubscribe: <mailto:u@l.test>, <https://l.test/u?id=1>\r\n";
        let mailto = "List-Unsubscribe: <mailto:u@l.test>\r\n";
        for (fields, want) in [
            (format!("{https}{post}"), None),
            (https.to_string(), Some(OneClickMissing::PostHeader)),
            (format!("{mailto}{post}"), Some(OneClickMissing::HttpsUri)),
            (
                format!("List-Id: <news.l.test>\r\n{post}"),
                Some(OneClickMissing::HttpsUri),
            ),
            (
                "Precedence: Bulk\r\n".into(),
                Some(OneClickMissing::PostHeader),
            ),
            ("Precedence: junk\r\n".into(), None),
        ] {
            let h = parse(&format!("From: a@s.test\r\n{fields}\r\nbody\r\n"));
            assert_eq!(h.one_click_missing(), want, "{fields}");
        }
    }
}

//! Where a refusal says to ask for removal: the link (or address) in the reply text that
//! a delisting form or the operator needs, kept with the block's evidence.

use std::sync::LazyLock;

use regex::Regex;

static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"(?i)\bhttps?://[^\s<>"'\])]+"#).expect("valid pattern"));
static BARE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(csi\.cloudmark\.com/\S*|sender\.office\.com/?\S*|delist@microsoft\.com)")
        .expect("valid pattern")
});

/// The removal link in a reply, if it has one: a link that looks like a removal or
/// lookup page first, then any link, then the known bare forms.
pub fn find_removal_url(text: &str) -> Option<String> {
    let urls: Vec<&str> = URL
        .find_iter(text)
        .map(|m| m.as_str().trim_end_matches(['.', ',', ';']))
        .collect();
    const HINTS: [&str; 8] = [
        "reset",
        "delist",
        "remov",
        "sender.office.com",
        "ipcheck",
        "senderguidelines",
        "lookup",
        "query",
    ];
    let hinted = urls.iter().find(|u| {
        let l = u.to_ascii_lowercase();
        HINTS.iter().any(|h| l.contains(h))
    });
    if let Some(u) = hinted.or(urls.first()) {
        return Some(u.to_string());
    }
    BARE.find(text).map(|m| {
        let s = m.as_str().trim_end_matches(['.', ',', ';']);
        if s.contains('@') {
            format!("mailto:{s}")
        } else {
            format!("https://{s}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_urls_are_found() {
        let cases = [
            (
                "550 5.7.1 blocked using CSI; https://csi.cloudmark.com/reset-request/?ip=192.0.2.1",
                Some("https://csi.cloudmark.com/reset-request/?ip=192.0.2.1"),
            ),
            (
                "550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/ and follow the directions. For more information please go to http://go.microsoft.com/fwlink/?LinkID=526655",
                Some("https://sender.office.com/"),
            ),
            (
                "550 5.7.511 Access denied, banned sender[192.0.2.1]. To request removal from this list, forward this message to delist@microsoft.com.",
                Some("mailto:delist@microsoft.com"),
            ),
            (
                "554 blocked, see csi.cloudmark.com/reset-request/?ip=192.0.2.1.",
                Some("https://csi.cloudmark.com/reset-request/?ip=192.0.2.1"),
            ),
            (
                "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred; see https://postmaster.yahooinc.com/error-codes",
                Some("https://postmaster.yahooinc.com/error-codes"),
            ),
            ("550 5.7.1 go away", None),
        ];
        for (text, want) in cases {
            assert_eq!(find_removal_url(text).as_deref(), want, "{text}");
        }
    }
}

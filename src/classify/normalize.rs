//! Replies arrive in many shapes: multi-line (`550-5.7.1 a` / `550 5.7.1 b`), quoted from
//! a DSN (`smtp; 550 …`), with the enhanced code repeated on every line. Rules match the
//! plain text, so it is normalised once here.

/// A reply split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedReply {
    /// 0 when the text carries no reply code.
    pub code: u16,
    /// Enhanced status code, empty when absent.
    pub enhanced: String,
    /// The text, one line, without codes.
    pub text: String,
}

/// Parses a reply as an operator pastes it (from a log, a bounce, a DSN).
pub fn parse_reply(raw: &str) -> ParsedReply {
    let mut code = 0u16;
    let mut enhanced = String::new();
    let mut parts = Vec::new();
    for line in raw.lines() {
        let mut rest = line.trim();
        if let Some(stripped) = strip_prefix_ci(rest, "smtp;") {
            rest = stripped.trim_start();
        }
        if let Some((c, tail)) = split_code(rest) {
            if code == 0 {
                code = c;
            }
            rest = tail;
        }
        if let Some((e, tail)) = split_enhanced(rest) {
            if enhanced.is_empty() {
                enhanced = e.to_string();
            }
            rest = tail;
        }
        if !rest.is_empty() {
            parts.push(rest);
        }
    }
    ParsedReply {
        code,
        enhanced,
        text: normalize_text(&parts.join(" ")),
    }
}

/// Collapses whitespace (and CR/LF) to single spaces.
pub fn normalize_text(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// `550-rest` or `550 rest` or `550` alone.
fn split_code(s: &str) -> Option<(u16, &str)> {
    let b = s.as_bytes();
    if b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && (b.len() == 3 || matches!(b[3], b' ' | b'-' | b','))
        && (b'2'..=b'5').contains(&b[0])
    {
        let code = s[..3].parse().ok()?;
        Some((
            code,
            s.get(4..).unwrap_or("").trim_start_matches([' ', ',']),
        ))
    } else {
        None
    }
}

/// `5.7.1 rest`: class 2, 4 or 5, then subject and detail of up to three digits.
fn split_enhanced(s: &str) -> Option<(&str, &str)> {
    // Google's documentation writes replies as `421, "4.7.0", text`.
    let end = s.find(|c: char| c.is_whitespace()).unwrap_or(s.len());
    let token = s[..end].trim_end_matches(',').trim_matches('"');
    let mut it = token.split('.');
    let (class, subject, detail) = (it.next()?, it.next()?, it.next()?);
    let digits = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
    };
    (it.next().is_none()
        && matches!(class, "2" | "4" | "5")
        && digits(subject, 3)
        && digits(detail, 3))
    .then(|| (token, s[end..].trim_start()))
}

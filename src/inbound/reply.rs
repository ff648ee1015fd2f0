use std::borrow::Cow;

/// An SMTP reply to send. A rejection is a value, not an `Err`: the session goes on.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply code, e.g. 250.
    pub code: u16,
    /// Enhanced status code (RFC 3463), empty for replies that carry none (greeting, EHLO).
    pub enhanced: &'static str,
    /// One entry per line of a multi-line reply.
    pub lines: Vec<Cow<'static, str>>,
    /// A refusal that is our limit, not the client's mistake: it does not count towards
    /// the errors that end a session.
    pub harmless: bool,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced,
            lines: vec![text.into()],
            harmless: false,
        }
    }

    /// Marks a refusal that is no fault of the client's (see [`Reply::harmless`]).
    pub fn harmless(mut self) -> Self {
        self.harmless = true;
        self
    }

    /// Whether it counts towards the errors that end a session.
    pub fn is_error(&self) -> bool {
        !self.is_positive() && !self.harmless
    }

    /// A multi-line reply without an enhanced code (EHLO).
    pub fn multiline(code: u16, lines: Vec<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced: "",
            lines,
            harmless: false,
        }
    }

    /// Whether the session must end after this reply (RFC 5321 §3.8: 421 closes).
    pub fn closes(&self) -> bool {
        self.code == 421 || self.code == 221
    }

    /// Whether the reply accepts (2xx and 3xx).
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// Appends the reply in wire form (CRLF, `-` continuation).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            // A reply line must not contain CR/LF: text built from client input (a HELO
            // name, an address) could otherwise inject a fake reply.
            let line: Cow<'_, str> = if line.contains(['\r', '\n']) {
                line.replace(['\r', '\n'], " ").into()
            } else {
                Cow::Borrowed(line.as_ref())
            };
            let _ = if self.enhanced.is_empty() {
                write!(out, "{}{}{}\r\n", self.code, sep, line)
            } else {
                write!(out, "{}{}{} {}\r\n", self.code, sep, self.enhanced, line)
            };
        }
    }
}

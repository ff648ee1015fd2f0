//! Reply → verdict. The one place that decides what an attempt's result means; the
//! queue acts on the verdict and nothing else looks at reply codes.

use crate::spool::RemoteReply;

/// The classified outcome of one recipient's attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted by the destination: done.
    Delivered,
    /// Try again later (4xx, no answer, DNS trouble).
    Transient,
    /// Will never succeed as sent (5xx, nonexistent domain): bounce with a DSN.
    Permanent,
}

/// Classifies a reply. `code == 0` means no server answered (connection refused, timeout,
/// DNS temporary failure) and is transient unless the enhanced code says permanent (a
/// nonexistent domain is reported as `5.1.2` with code 0).
pub fn classify(reply: &RemoteReply) -> Verdict {
    match reply.code {
        200..=299 => Verdict::Delivered,
        500..=599 => Verdict::Permanent,
        0 if reply.enhanced.starts_with('5') => Verdict::Permanent,
        // 4xx, 0 (no answer) and anything outside the RFC 5321 ranges: a misbehaving
        // server is no reason to give up on the message.
        _ => Verdict::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: &str) -> RemoteReply {
        RemoteReply {
            code,
            enhanced: enhanced.into(),
            text: String::new(),
            mx: None,
        }
    }

    #[test]
    fn verdict_table() {
        let table = [
            (250, "2.0.0", Verdict::Delivered),
            (251, "2.1.5", Verdict::Delivered),
            (421, "4.7.0", Verdict::Transient),
            (450, "4.2.0", Verdict::Transient),
            (550, "5.1.1", Verdict::Permanent),
            (554, "5.7.1", Verdict::Permanent),
            (0, "4.4.1", Verdict::Transient),
            (0, "5.1.2", Verdict::Permanent),
            (354, "", Verdict::Transient),
            (999, "", Verdict::Transient),
        ];
        for (code, enhanced, want) in table {
            assert_eq!(classify(&reply(code, enhanced)), want, "{code} {enhanced}");
        }
    }
}

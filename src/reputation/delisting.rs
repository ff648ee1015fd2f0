//! A block as a delisting form wants it: since when, the exact reply, the MX, the log
//! line, where to ask for removal. What `sidestep blocks` and `delist-report` print and
//! what a block alert carries.

use super::blocks::Block;

impl Block {
    /// The block as a delisting form wants it (since when, the exact reply, the MX, the
    /// log line, where to ask for removal), every line prefixed with `indent`: what
    /// `sidestep blocks` and `delist-report` print and what a block alert carries.
    pub fn report(&self, indent: &str, now: u64) -> String {
        use std::fmt::Write;
        let b = self;
        let mut s = String::new();
        let state = if b.expires_at > now {
            format!("blocked until {}", crate::clock::rfc3339(b.expires_at))
        } else if b.canary_in_flight {
            "expired, canary delivery under way".to_string()
        } else {
            "expired, the next delivery is a canary".to_string()
        };
        let e = &b.evidence;
        if b.manual {
            let _ = writeln!(
                s,
                "{indent}{} suspended by the operator for site {}",
                b.ip, b.site
            );
        } else if b.silent {
            let _ = writeln!(
                s,
                "{indent}{} silently discarded by site {} (accepted with 250, never delivered: seed probe)",
                b.ip, b.site
            );
        } else {
            let _ = writeln!(s, "{indent}{} refused by site {}", b.ip, b.site);
        }
        let _ = writeln!(
            s,
            "{indent}  since:   {} ({state}; repeats: {})",
            crate::clock::rfc3339(b.first_seen),
            b.strikes
        );
        let _ = writeln!(s, "{indent}  reply:   {}", e.reply);
        let mx = match (&e.mx_host, e.mx_ip) {
            (Some(h), Some(ip)) => format!("{h} [{ip}]"),
            (Some(h), None) => h.clone(),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            s,
            "{indent}  mx:      {mx}, at {}, message {} to {}",
            crate::clock::rfc3339(e.at),
            e.queue_id,
            e.recipient
        );
        let _ = writeln!(s, "{indent}  rule:    {}", e.rule);
        let _ = writeln!(
            s,
            "{indent}  removal: {}",
            e.removal_url.as_deref().unwrap_or("(the reply names none)")
        );
        let _ = writeln!(s, "{indent}  log:     {}", e.log_line);
        if !b.later.is_empty() {
            let _ = writeln!(
                s,
                "{indent}  also:    {} more refusal(s) from attempts already in flight (not counted as repeats):",
                b.later.len()
            );
            for l in &b.later {
                let _ = writeln!(
                    s,
                    "{indent}           {} {}",
                    crate::clock::rfc3339(l.at),
                    l.reply
                );
            }
        }
        s
    }
}

//! Validation: every semantic problem of a parsed configuration, each with the key an
//! operator has to edit, one function per section. Schema problems (unknown keys, values
//! of the wrong type) are found earlier, by [`super::load`].

use std::collections::HashSet;
use std::net::IpAddr;

use super::{Config, ConfigError, default_pool_name};

/// Every problem, in section order.
pub(super) fn all(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |key: String, problem: String| errors.push(ConfigError { key, problem });
    server(c, &mut err);
    queue(c, &mut err);
    delivery(c, &mut err);
    dns_and_listings(c, &mut err);
    blocklists(c, &mut err);
    classify_rules(c, &mut err);
    pools(c, &mut err);
    blocks(c, &mut err);
    smarthosts(c, &mut err);
    routes(c, &mut err);
    admin(c, &mut err);
    security(c, &mut err);
    probes(c, &mut err);
    complaints(c, &mut err);
    cluster(c, &mut err);
    dkim(c, &mut err);
    tlsrpt(c, &mut err);
    if let Some(to) = &c.alerts.mail
        && crate::envelope::Address::parse(to, false).is_err()
    {
        err(
            "alerts.mail".into(),
            format!("{to:?} is not a mail address"),
        );
    }
    if c.alerts.spool_free_below > 100 {
        err(
            "alerts.spool_free_below".into(),
            "a percentage: 0 to 100".into(),
        );
    }
    if let Some(path) = &c.alerts.ca_file {
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                if let Err(e) = crate::tls::client(Some(&pem)) {
                    err("alerts.ca_file".into(), format!("{}: {e}", path.display()));
                }
            }
            Err(e) => err(
                "alerts.ca_file".into(),
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    errors.extend(super::bounces::problems(c));
    errors
}

/// Whether a pool of this name exists (the implicit default pool when none is configured).
fn pool_known(c: &Config, name: &str) -> bool {
    c.pools.iter().any(|p| p.name == name) || (c.pools.is_empty() && name == default_pool_name())
}

/// Whether a smarthost of this name exists.
fn smarthost_known(c: &Config, name: &str) -> bool {
    c.smarthosts.iter().any(|s| s.name == name)
}

/// `[server]` and `[spool]`.
fn server(c: &Config, err: &mut impl FnMut(String, String)) {
    let s = &c.server;
    if s.hostname.trim().is_empty() {
        err("server.hostname".into(), "must not be empty".into());
    }
    if s.reserved_sessions.is_some_and(|r| r >= s.max_sessions) && s.max_sessions > 0 {
        err(
            "server.reserved_sessions".into(),
            format!(
                "must be less than server.max_sessions ({}), or no client outside relay_networks could connect",
                s.max_sessions
            ),
        );
    }
    if s.max_sessions_per_ip == 0 {
        err(
            "server.max_sessions_per_ip".into(),
            "must be at least 1".into(),
        );
    }
    if s.max_connection_rate_per_ip == 0 {
        err(
            "server.max_connection_rate_per_ip".into(),
            "must be at least 1".into(),
        );
    }
    if s.min_data_rate == 0 {
        err(
            "server.min_data_rate".into(),
            "must be at least 1 byte per second".into(),
        );
    }
    if s.stress_timeout.is_zero() {
        err(
            "server.stress_timeout".into(),
            "must be more than 0s".into(),
        );
    }
    if s.max_sessions == 0 {
        err("server.max_sessions".into(), "must be at least 1".into());
    }
    if s.max_message_size.as_u64() < 1024 {
        err(
            "server.max_message_size".into(),
            "must be at least 1KiB".into(),
        );
    }
    if s.max_recipients == 0 {
        err("server.max_recipients".into(), "must be at least 1".into());
    }
    if s.max_line_length < 512 {
        err(
            "server.max_line_length".into(),
            "must be at least 512 (RFC 5321 §4.5.3.1.4)".into(),
        );
    }
    if s.idle_timeout.is_zero() {
        err("server.idle_timeout".into(), "must be more than 0s".into());
    }
    if c.spool.directory.as_os_str().is_empty() {
        err("spool.directory".into(), "must not be empty".into());
    }
}

/// `[queue]`.
fn queue(c: &Config, err: &mut impl FnMut(String, String)) {
    let q = &c.queue;
    if q.retry_initial.is_zero() {
        err("queue.retry_initial".into(), "must be more than 0s".into());
    }
    if !(q.retry_factor.is_finite() && q.retry_factor >= 1.0) {
        err(
            "queue.retry_factor".into(),
            format!("must be a number >= 1, not {}", q.retry_factor),
        );
    }
    if q.retry_max.get() < q.retry_initial.get() {
        err(
            "queue.retry_max".into(),
            format!(
                "({}) must not be shorter than queue.retry_initial ({})",
                q.retry_max, q.retry_initial
            ),
        );
    }
    if q.max_lifetime.is_zero() {
        err("queue.max_lifetime".into(), "must be more than 0s".into());
    }
}

/// `[delivery]`, and the pool and fallback it names.
fn delivery(c: &Config, err: &mut impl FnMut(String, String)) {
    let d = &c.delivery;
    if d.port == 0 {
        err("delivery.port".into(), "must not be 0".into());
    }
    if d.max_connections == 0 {
        err(
            "delivery.max_connections".into(),
            "must be at least 1".into(),
        );
    }
    if d.max_connections_per_domain == 0 {
        err(
            "delivery.max_connections_per_domain".into(),
            "must be at least 1".into(),
        );
    }
    if d.connect_timeout.is_zero() {
        err(
            "delivery.connect_timeout".into(),
            "must be more than 0s".into(),
        );
    }
    if d.command_timeout.is_zero() {
        err(
            "delivery.command_timeout".into(),
            "must be more than 0s".into(),
        );
    }
    if d.reuse_messages == 0 {
        err(
            "delivery.reuse_messages".into(),
            "must be at least 1 (turn reuse off with reuse_idle = \"0s\")".into(),
        );
    }
    if d.reuse_max_idle == 0 {
        err(
            "delivery.reuse_max_idle".into(),
            "must be at least 1 (turn reuse off with reuse_idle = \"0s\")".into(),
        );
    }

    if !pool_known(c, &d.pool) {
        err(
            "delivery.pool".into(),
            format!("no [[pools]] entry is named {:?}", d.pool),
        );
    }
    if let Some(f) = &d.fallback
        && !smarthost_known(c, f)
    {
        err(
            "delivery.fallback".into(),
            format!("no [[smarthosts]] entry is named {f:?}"),
        );
    }
}

/// `[dns]` and `[listings]`.
fn dns_and_listings(c: &Config, err: &mut impl FnMut(String, String)) {
    if c.dns.timeout.is_zero() {
        err("dns.timeout".into(), "must be more than 0s".into());
    }
    if c.listings.refresh.get() < std::time::Duration::from_secs(1) {
        err("listings.refresh".into(), "must be at least 1s".into());
    }
    if c.listings.jitter.get() > c.listings.refresh.get() {
        err(
            "listings.jitter".into(),
            "must not be longer than listings.refresh".into(),
        );
    }
    for (i, ns) in c.dns.nameservers.iter().enumerate() {
        if ns.port() == 0 {
            err(format!("dns.nameservers[{i}]"), "port must not be 0".into());
        }
    }
}

/// `[[blocklists]]`: zones, and codes that can mean listed.
fn blocklists(c: &Config, err: &mut impl FnMut(String, String)) {
    let mut zones = HashSet::new();
    for (i, list) in c.blocklists.iter().enumerate() {
        let zone = list.zone.trim_end_matches('.');
        if !crate::envelope::is_valid_domain(zone) || !zone.contains('.') {
            err(
                format!("blocklists[{i}].zone"),
                format!("{:?} is not a DNS zone", list.zone),
            );
        } else if !zones.insert(zone.to_ascii_lowercase()) {
            err(
                format!("blocklists[{i}].zone"),
                format!("{zone} is listed twice"),
            );
        }
        if list.codes.is_empty() {
            err(
                format!("blocklists[{i}].codes"),
                "name at least one return code that means listed".into(),
            );
        }
        for code in list.codes.keys() {
            match code.parse::<std::net::Ipv4Addr>() {
                Ok(ip) if ip.octets()[0] == 127 && ip != std::net::Ipv4Addr::new(127, 0, 0, 1) => {}
                _ => err(
                    format!("blocklists[{i}].codes.\"{code}\""),
                    "a listing code is an address in 127.0.0.0/8 other than 127.0.0.1".into(),
                ),
            }
        }
    }
}

/// `[[classify.rules]]`: every pattern compiles.
fn classify_rules(c: &Config, err: &mut impl FnMut(String, String)) {
    for (i, rule) in c.classify.rules.iter().enumerate() {
        if let Err(e) = regex::Regex::new(&crate::classify::pattern(&rule.pattern)) {
            err(format!("classify.rules[{i}].pattern"), e.to_string());
        }
    }
}

/// `[[pools]]` and their egress addresses.
fn pools(c: &Config, err: &mut impl FnMut(String, String)) {
    let mut names = HashSet::new();
    for (i, pool) in c.pools.iter().enumerate() {
        if pool.name.trim().is_empty() {
            err(format!("pools[{i}].name"), "must not be empty".into());
        } else if !names.insert(pool.name.as_str()) {
            err(
                format!("pools[{i}].name"),
                format!("duplicate pool name {:?}", pool.name),
            );
        }
        if pool.egress.is_empty() {
            err(
                format!("pools[{i}].egress"),
                "a pool needs at least one egress address".into(),
            );
        }
        let mut ips = HashSet::new();
        for (j, e) in pool.egress.iter().enumerate() {
            if !e.warmup.is_empty() && (e.ip.is_none() || e.warmup.contains(&0)) {
                err(
                    format!("pools[{i}].egress[{j}].warmup"),
                    "daily caps above 0, for an egress address with an ip".into(),
                );
            }
            if let Some(d) = &e.warmup_start
                && super::epoch_day(d).is_none()
            {
                err(
                    format!("pools[{i}].egress[{j}].warmup_start"),
                    format!("{d:?} is not a date (YYYY-MM-DD)"),
                );
            }
            if let Some(ip) = e.ip {
                if ip.is_unspecified() || ip.is_multicast() {
                    err(
                        format!("pools[{i}].egress[{j}].ip"),
                        format!("{ip} cannot be a source address"),
                    );
                }
                if !ips.insert(ip) {
                    err(
                        format!("pools[{i}].egress[{j}].ip"),
                        format!("{ip} appears twice in this pool"),
                    );
                }
            }
            if let Some(helo) = &e.helo
                && !crate::envelope::is_valid_domain(helo)
            {
                err(
                    format!("pools[{i}].egress[{j}].helo"),
                    format!("{helo:?} is not a host name"),
                );
            }
        }
    }
}

/// `[blocks]`.
fn blocks(c: &Config, err: &mut impl FnMut(String, String)) {
    if c.blocks.duration.is_zero() {
        err("blocks.duration".into(), "must be more than 0s".into());
    }
    if c.blocks.max_duration.get() < c.blocks.duration.get() {
        err(
            "blocks.max_duration".into(),
            "must not be shorter than blocks.duration".into(),
        );
    }
}

/// `[[smarthosts]]`: names, hosts, credentials, files.
fn smarthosts(c: &Config, err: &mut impl FnMut(String, String)) {
    let mut smarthost_names = HashSet::new();
    for (i, sh) in c.smarthosts.iter().enumerate() {
        if sh.name.trim().is_empty() || !smarthost_names.insert(sh.name.as_str()) {
            err(
                format!("smarthosts[{i}].name"),
                format!("{:?} is empty or used twice", sh.name),
            );
        }
        if sh.host.parse::<IpAddr>().is_err() && !crate::envelope::is_valid_domain(&sh.host) {
            err(
                format!("smarthosts[{i}].host"),
                format!("{:?} is not a host name or address", sh.host),
            );
        }
        if sh.port == 0 {
            err(format!("smarthosts[{i}].port"), "must not be 0".into());
        }
        match (&sh.username, &sh.password, &sh.password_file) {
            (_, Some(_), Some(_)) => err(
                format!("smarthosts[{i}].password_file"),
                "give password or password_file, not both".into(),
            ),
            (Some(_), None, None) => err(
                format!("smarthosts[{i}].password"),
                "username needs password or password_file".into(),
            ),
            (None, Some(_), _) | (None, _, Some(_)) => err(
                format!("smarthosts[{i}].username"),
                "a password needs a username".into(),
            ),
            _ => {}
        }
        for (key, path) in [
            ("password_file", &sh.password_file),
            ("ca_file", &sh.ca_file),
        ] {
            if let Some(path) = path
                && let Err(e) = std::fs::metadata(path)
            {
                err(
                    format!("smarthosts[{i}].{key}"),
                    format!("cannot read {}: {e}", path.display()),
                );
            }
        }
    }
}

/// `[[routes]]`: patterns, and the pools and smarthosts they name.
fn routes(c: &Config, err: &mut impl FnMut(String, String)) {
    for (i, route) in c.routes.iter().enumerate() {
        if route.domains.is_empty() {
            err(
                format!("routes[{i}].domains"),
                "name at least one domain".into(),
            );
        }
        for (j, pattern) in route.domains.iter().enumerate() {
            let bare = pattern.strip_prefix("*.").unwrap_or(pattern);
            if pattern != "*" && !crate::envelope::is_valid_domain(bare) {
                err(
                    format!("routes[{i}].domains[{j}]"),
                    format!("{pattern:?} is not a domain, *.domain or *"),
                );
            }
        }
        if let Some(p) = &route.pool
            && !pool_known(c, p)
        {
            err(
                format!("routes[{i}].pool"),
                format!("no [[pools]] entry is named {p:?}"),
            );
        }
        if let Some(f) = &route.fallback
            && !smarthost_known(c, f)
        {
            err(
                format!("routes[{i}].fallback"),
                format!("no [[smarthosts]] entry is named {f:?}"),
            );
        }
    }
}
/// `[admin]`: an address, and a token file that can be read.
fn admin(c: &Config, err: &mut impl FnMut(String, String)) {
    if let Err(e) = c.admin.address() {
        err(
            "admin.listen".into(),
            format!("{:?} is not ip:port or \"\": {e}", c.admin.listen),
        );
    }
    if let Some(path) = &c.admin.token_file {
        match std::fs::read_to_string(path) {
            Ok(t) if t.lines().next().is_some_and(|l| l.trim().len() >= 16) => {}
            Ok(_) => err(
                "admin.token_file".into(),
                format!(
                    "{}: the token (first line) must be at least 16 characters",
                    path.display()
                ),
            ),
            Err(e) => err(
                "admin.token_file".into(),
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
}

/// TLS certificate and key, the implicit-TLS listener, the users file.
fn security(c: &Config, err: &mut impl FnMut(String, String)) {
    let s = &c.server;
    match (&s.tls_certificate, &s.tls_key) {
        (Some(_), None) => err(
            "server.tls_key".into(),
            "tls_certificate is set: its private key is needed too".into(),
        ),
        (None, Some(_)) => err(
            "server.tls_certificate".into(),
            "tls_key is set: its certificate is needed too".into(),
        ),
        // Whether they make an acceptor is for inbound (`inbound::check_config`).
        (Some(_), Some(_)) => {}
        (None, None) => {
            if s.listen_tls.is_some() {
                err(
                    "server.listen_tls".into(),
                    "implicit TLS needs tls_certificate and tls_key".into(),
                );
            }
        }
    }
    if c.auth.max_failures == 0 {
        err("auth.max_failures".into(), "at least 1".into());
    }
    for (i, o) in c.quotas.overrides.iter().enumerate() {
        let named = [
            o.user.is_some(),
            o.client.is_some(),
            o.sender_domain.is_some(),
        ];
        if named.iter().filter(|n| **n).count() != 1 {
            err(
                format!("quotas.overrides[{i}]"),
                "name exactly one of user, client, sender_domain".into(),
            );
        }
    }
    if !(0.0..=1.0).contains(&c.queue.retry_jitter) {
        err(
            "queue.retry_jitter".into(),
            format!("{}: a share of the delay, 0.0 to 1.0", c.queue.retry_jitter),
        );
    }
    for (i, r) in c.shaping.iter().enumerate() {
        if r.sites.iter().all(|p| p.trim().is_empty()) {
            err(
                format!("shaping[{i}].sites"),
                "name at least one site or domain pattern".into(),
            );
        }
        if r.max_connections == Some(0)
            || [
                r.messages_per_connection,
                r.messages_per_hour,
                r.connections_per_minute,
            ]
            .contains(&Some(0))
        {
            err(
                format!("shaping[{i}]"),
                "a limit of 0 would stop the site's mail; leave it out for no limit".into(),
            );
        }
    }
    let s = &c.suspension;
    for (key, ratio) in [
        ("suspension.reputation_ratio", s.reputation_ratio),
        (
            "suspension.unknown_recipient_ratio",
            s.unknown_recipient_ratio,
        ),
    ] {
        if !(0.0..=1.0).contains(&ratio) {
            err(key.into(), format!("{ratio}: a share, 0.0 to 1.0"));
        }
    }
    if s.spike_factor < 1.0 {
        err(
            "suspension.spike_factor".into(),
            "at least 1.0 (a multiple of the usual volume)".into(),
        );
    }
}

fn probes(c: &Config, err: &mut impl FnMut(String, String)) {
    let p = &c.probes;
    let Some(_) = p.imap.as_deref().filter(|s| !s.trim().is_empty()) else {
        if !p.seeds.is_empty() {
            err(
                "probes.imap".into(),
                "seeds are listed but no mailbox to read them from".into(),
            );
        }
        return;
    };
    mailbox(
        "probes",
        p.password_file.as_deref(),
        p.ca_file.as_deref(),
        err,
    );
    for (key, d) in [
        ("interval", p.interval),
        ("deadline", p.deadline),
        ("hold", p.hold),
    ] {
        if d.get() < std::time::Duration::from_secs(1) {
            err(format!("probes.{key}"), "at least 1s".into());
        }
    }
    if p.folders.is_empty() {
        err(
            "probes.folders".into(),
            "at least the inbox (\"INBOX\")".into(),
        );
    }
    if p.seeds.is_empty() {
        err(
            "probes.seeds".into(),
            "no seed address: add [[probes.seeds]] address = \"…\"".into(),
        );
    }
    for (i, seed) in p.seeds.iter().enumerate() {
        if crate::envelope::Address::parse(&seed.address, false).is_err() {
            err(
                format!("probes.seeds[{i}].address"),
                format!("{:?} is not a mail address", seed.address),
            );
        }
    }
    if let Some(from) = &p.from
        && crate::envelope::Address::parse(from, false).is_err()
    {
        err(
            "probes.from".into(),
            format!("{from:?} is not a mail address"),
        );
    }
}

/// An IMAP mailbox's settings under `section`: a readable password file, a usable CA
/// file. The URL itself is checked by the probes module, which parses it
/// (`probes::check_config`).
fn mailbox(
    section: &str,
    password_file: Option<&std::path::Path>,
    ca_file: Option<&std::path::Path>,
    err: &mut impl FnMut(String, String),
) {
    match password_file {
        None => err(
            format!("{section}.password_file"),
            "the IMAP password file is required with an imap mailbox".into(),
        ),
        Some(path) => {
            if let Err(e) = std::fs::read_to_string(path) {
                err(
                    format!("{section}.password_file"),
                    format!("cannot read {}: {e}", path.display()),
                );
            }
        }
    }
    if let Some(path) = ca_file
        && let Err(e) = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| {
                crate::tls::client(Some(&pem))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
    {
        err(
            format!("{section}.ca_file"),
            format!("{}: {e}", path.display()),
        );
    }
}

fn complaints(c: &Config, err: &mut impl FnMut(String, String)) {
    let cfg = &c.complaints;
    if !cfg.enabled {
        return;
    }
    let (imap, password_file, ca_file) = cfg.mailbox(&c.probes);
    match imap.filter(|s| !s.trim().is_empty()) {
        None => err(
            "complaints.imap".into(),
            "enabled, but no mailbox: set complaints.imap (or probes.imap)".into(),
        ),
        // The probes' mailbox is checked as theirs.
        Some(_) if cfg.imap.is_some() => {
            mailbox("complaints", password_file, ca_file, err);
        }
        Some(_) => {}
    }
    if cfg.interval.get() < std::time::Duration::from_secs(1) {
        err("complaints.interval".into(), "at least 1s".into());
    }
    if cfg.folders.is_empty() {
        err(
            "complaints.folders".into(),
            "at least one folder (\"INBOX\")".into(),
        );
    }
}

fn cluster(c: &Config, err: &mut impl FnMut(String, String)) {
    let Some(url) = c.cluster.redis.as_deref().filter(|u| !u.trim().is_empty()) else {
        return;
    };
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        err(
            "cluster.redis".into(),
            format!("{url:?}: must start with redis:// (or rediss:// for TLS)"),
        );
    }
}

/// `[[dkim.keys]]`: names only. Whether each key file is safe and usable is for
/// `signing::Signer::load`, which check-config and serve call.
fn dkim(c: &Config, err: &mut impl FnMut(String, String)) {
    let mut seen = HashSet::new();
    for (i, k) in c.dkim.keys.iter().enumerate() {
        let domain = k.domain.trim_end_matches('.');
        if domain.is_empty()
            || !domain.contains('.')
            || !domain
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            err(
                format!("dkim.keys[{i}].domain"),
                format!(
                    "{:?} is not a domain name (use the A-label form of IDNs)",
                    k.domain
                ),
            );
        }
        // RFC 6376 §3.1: a selector is one or more dot-separated labels.
        if k.selector.is_empty()
            || !k.selector.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        {
            err(
                format!("dkim.keys[{i}].selector"),
                format!(
                    "{:?} is not a selector (letters, digits, '-', dot-separated)",
                    k.selector
                ),
            );
        }
        if !seen.insert((domain.to_ascii_lowercase(), k.selector.to_ascii_lowercase())) {
            err(
                format!("dkim.keys[{i}]"),
                format!("a second key for {domain} with selector {}", k.selector),
            );
        }
    }
}

/// `[tlsrpt]`: a zero first interval would double to zero and POST without pause.
fn tlsrpt(c: &Config, err: &mut impl FnMut(String, String)) {
    if c.tlsrpt.retry_initial.is_zero() {
        err("tlsrpt.retry_initial".into(), "must be more than 0s".into());
    }
}

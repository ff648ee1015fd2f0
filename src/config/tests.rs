use super::*;
use bytesize::ByteSize;

#[test]
fn embedded_defaults_are_valid() {
    assert_eq!(Config::default().validate(), vec![]);
    let empty = Config::parse("").unwrap();
    assert_eq!(empty.validate(), vec![]);
    assert_eq!(empty.server.listen, "127.0.0.1:2525".parse().unwrap());
    assert_eq!(empty.delivery.port, 25);
    assert!(empty.dns.nameservers.is_empty());
    assert_eq!(empty.effective_pools()[0].egress[0].ip, None);
}

#[test]
fn shipped_config_file_loads_and_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidestep.toml");
    let config = Config::load(&path).unwrap();
    assert_eq!(config.validate(), vec![]);
    // The commented examples ("#: ") parse too, and are valid but for the example
    // password file, which does not exist here.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\n#: ", "\n");
    let examples = Config::parse(&text).unwrap();
    let errors: Vec<String> = examples.validate().into_iter().map(|e| e.key).collect();
    assert_eq!(errors, vec!["smarthosts[0].password_file"]);
    assert_eq!(examples.routes[0].fallback.as_deref(), Some("clean-relay"));
    assert_eq!(examples.delivery.fallback.as_deref(), Some("clean-relay"));
    assert_eq!(config.dkim.sign, SignPolicy::Authenticated);
    assert!(config.dkim.keys.is_empty());
    let algorithms: Vec<_> = examples.dkim.keys.iter().map(|k| k.algorithm).collect();
    assert_eq!(
        algorithms,
        [DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256]
    );
    assert_eq!(config.compliance.one_click, OneClick::Warn);
    assert_eq!(config.server.max_message_size, ByteSize::mib(25));
    assert_eq!(config.queue.max_lifetime.get().as_secs(), 5 * 24 * 3600);
    assert_eq!(config.pools[0].egress.len(), 2);
    let zones: Vec<&str> = config.blocklists.iter().map(|l| l.zone.as_str()).collect();
    assert_eq!(
        zones,
        [
            "zen.spamhaus.org",
            "bl.spamcop.net",
            "b.barracudacentral.org",
            "dnsbl-1.uceprotect.net",
            "psbl.surriel.com",
            "bl.mailspike.net"
        ]
    );
    assert!(!zones.iter().any(|z| z.contains("sorbs")));
    assert!(config.blocklists.iter().all(|l| l.removal_url.is_some()));
}

#[test]
fn blocklist_validation() {
    let config = Config::parse(
        r#"
[listings]
refresh = "100ms"
[[blocklists]]
zone = "bl"
codes = {}
[[blocklists]]
zone = "ok.test"
codes = { "127.0.0.1" = "x", "10.0.0.2" = "y", "127.0.0.2" = "fine" }
[[blocklists]]
zone = "OK.test"
codes = { "127.0.0.2" = "dup" }
"#,
    )
    .unwrap();
    let keys: Vec<String> = config.validate().into_iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        vec![
            "listings.refresh",
            "listings.jitter",
            "blocklists[0].zone",
            "blocklists[0].codes",
            "blocklists[1].codes.\"10.0.0.2\"",
            "blocklists[1].codes.\"127.0.0.1\"",
            "blocklists[2].zone",
        ]
    );
}

#[test]
fn validation_reports_every_error_with_its_key() {
    let config = Config::parse(
        r#"
[server]
max_sessions = 0
max_line_length = 100
[queue]
retry_initial = "10m"
retry_max = "1m"
retry_factor = 0.5
[delivery]
port = 0
pool = "nope"
[[pools]]
name = "a"
egress = []
[[pools]]
name = "a"
[[pools.egress]]
ip = "0.0.0.0"
helo = "not a name"
"#,
    )
    .unwrap();
    let keys: Vec<String> = config.validate().into_iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        vec![
            "server.max_sessions",
            "server.max_line_length",
            "queue.retry_factor",
            "queue.retry_max",
            "delivery.port",
            "delivery.pool",
            "pools[0].egress",
            "pools[1].name",
            "pools[1].egress[0].ip",
            "pools[1].egress[0].helo",
        ]
    );
}

#[test]
fn parse_errors_name_the_key() {
    let e = Config::parse("[server]\nmax_sesions = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_sesions"), "{e}");
    let e = Config::parse("[queue]\nretry_initial = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("retry_initial") && e.contains("invalid duration"),
        "{e}"
    );
    let e = Config::parse("[server]\nrelay_networks = [\"10.0.0.0/33\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("relay_networks") && e.contains("entry [0] \"10.0.0.0/33\""),
        "{e}"
    );
}

#[test]
fn route_patterns() {
    let route = RouteConfig {
        domains: vec!["bell.net".into(), "*.aliant.net".into()],
        pool: None,
        fallback: None,
        tls: Default::default(),
    };
    for (domain, want) in [
        ("bell.net", true),
        ("mail.bell.net", false),
        ("aliant.net", true),
        ("nb.aliant.net", true),
        ("notaliant.net", false),
        ("example.com", false),
        ("NB.Aliant.NET", true),
        ("Bell.Net", true),
        ("net", false),
    ] {
        assert_eq!(route.matches(domain), want, "{domain}");
    }
    let all = RouteConfig {
        domains: vec!["*".into()],
        pool: None,
        fallback: None,
        tls: Default::default(),
    };
    assert!(all.matches("anything.test"));
    // Patterns are put in one form at load.
    let config = Config::parse("[[routes]]\ndomains = [\"*.Aliant.NET.\"]\n").unwrap();
    assert_eq!(config.routes[0].domains, vec!["*.aliant.net"]);
}

#[test]
fn dkim_keys_need_a_domain_a_selector_and_no_twin() {
    let c = Config::parse(
        "[dkim]\nsign = \"all\"\n\
         [[dkim.keys]]\ndomain = \"example.net\"\nselector = \"s1\"\nprivate_key = \"/k1\"\n\
         [[dkim.keys]]\ndomain = \"Example.NET.\"\nselector = \"S1\"\nprivate_key = \"/k2\"\nalgorithm = \"ed25519-sha256\"\n\
         [[dkim.keys]]\ndomain = \"no domain\"\nselector = \"a b\"\nprivate_key = \"/k3\"\nsubdomains = true\n",
    )
    .unwrap();
    let keys: Vec<String> = c.validate().into_iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        [
            "dkim.keys[1]",
            "dkim.keys[2].domain",
            "dkim.keys[2].selector"
        ]
    );
    assert!(Config::parse("[dkim]\nsign = \"everyone\"\n").is_err());
    assert!(Config::parse("[compliance]\none_click = \"maybe\"\n").is_err());
}

/// The embedded defaults send from the host's default source address; a pool of bound
/// addresses does not.
#[test]
fn the_defaults_use_the_default_source_address() {
    assert!(Config::default().uses_default_source());
    let c = Config::parse("[[pools]]\nname = \"default\"\n[[pools.egress]]\nip = \"192.0.2.1\"\n")
        .unwrap();
    assert!(!c.uses_default_source());
}

/// The issue's spelling, `[[dkim]]` entries without a `[dkim]` table, reads as the keys.
#[test]
fn dkim_keys_may_be_listed_as_dkim_entries() {
    let c = Config::parse(
        "[[dkim]]\ndomain = \"example.net\"\nselector = \"s1\"\nprivate_key = \"/k1\"\n\
         [[dkim]]\ndomain = \"example.net\"\nselector = \"s2\"\nprivate_key = \"/k2\"\nalgorithm = \"ed25519-sha256\"\n",
    )
    .unwrap();
    assert_eq!(c.dkim.keys.len(), 2);
    assert_eq!(c.dkim.sign, crate::config::SignPolicy::Authenticated);
    let c = Config::parse("[dkim]\nsign = \"all\"\n[[dkim.keys]]\ndomain = \"example.net\"\nselector = \"s1\"\nprivate_key = \"/k1\"\n").unwrap();
    assert_eq!(
        (c.dkim.keys.len(), c.dkim.sign),
        (1, crate::config::SignPolicy::All)
    );
    assert!(Config::parse("[dkim]\nsign = \"all\"\nkeyz = []\n").is_err());
}

//! Micro-benchmarks of the per-message hot paths (criterion): the routing decision, reply
//! classification, SMTP command parsing, DATA ingestion, at the end of DATA the header
//! block's parse and DKIM signing, per delivery the TLS policy lookup (MTA-STS and
//! DANE state from the caches), and the VERP token. `cargo bench --bench micro`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sidestep::classify::{Classifier, parse_reply};
use sidestep::config::{
    BlocklistConfig, DkimAlgorithm, DkimConfig, DkimKeyConfig, EgressConfig, PoolConfig,
};
use sidestep::content::Headers;
use sidestep::egress::{EgressIp, Standing};
use sidestep::reputation::dnsbl::{Finding, ListedCode};
use sidestep::reputation::{CheckOutcome, Evidence, Reputation};
use sidestep::routing::Pool;
use sidestep::signing::{Signer, keygen};
use sidestep::site::Site;

const EGRESS: u32 = 64;
const SITES: usize = 10_000;

fn egress_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 1)) + i))
}

/// 64 egress IPs, 10,000 sites, 10% of (IP, site) pairs blocked, 2 IPs listed.
fn routing_world() -> (Pool, Reputation, Vec<Site>) {
    let list = BlocklistConfig {
        zone: "bl.bench".into(),
        name: None,
        severity: Default::default(),
        codes: [("127.0.0.2".to_string(), "listed".to_string())].into(),
        removal_url: None,
        test_points: false,
    };
    let reputation = Reputation::in_memory(vec![list]);
    let mut outcome = CheckOutcome::default();
    outcome.health.push(("bl.bench".into(), Ok(None)));
    for i in 0..EGRESS {
        let finding = if i == 5 || i == 40 {
            Finding::Listed {
                codes: vec![ListedCode {
                    code: Ipv4Addr::new(127, 0, 0, 2),
                    meaning: "listed".into(),
                }],
            }
        } else {
            Finding::Clean
        };
        outcome
            .findings
            .push((egress_ip(i), "bl.bench".into(), Ok((finding, None))));
    }
    reputation.apply(outcome).unwrap();
    let sites: Vec<Site> = (0..SITES)
        .map(|s| Site::from(format!("mx{s}.bench.test").as_str()))
        .collect();
    let config = Default::default();
    for (s, site) in sites.iter().enumerate() {
        for i in 0..EGRESS {
            // A deterministic 10% of the pairs.
            if (s as u32 * 31 + i * 17).is_multiple_of(10) {
                let evidence = Evidence {
                    reply: "550 5.7.1 blocked using CSI".into(),
                    rule: "cloudmark-csi".into(),
                    at: 0,
                    mx_host: None,
                    mx_ip: None,
                    queue_id: "bench".into(),
                    recipient: "a@b.test".into(),
                    removal_url: None,
                    log_line: String::new(),
                    late: false,
                };
                reputation
                    .record_block(egress_ip(i), site, evidence, &config)
                    .unwrap();
            }
        }
    }
    let pool = Pool::from_config(
        &PoolConfig {
            name: "bench".into(),
            egress: (0..EGRESS)
                .map(|i| EgressConfig {
                    ip: Some(egress_ip(i)),
                    helo: None,
                    warmup: Vec::new(),
                    warmup_start: None,
                })
                .collect(),
        },
        "relay.bench.test",
    );
    (pool, reputation, sites)
}

fn routing(c: &mut Criterion) {
    let (pool, reputation, sites) = routing_world();
    let dest: IpAddr = "192.0.2.25".parse().unwrap();
    let mut n = 0usize;
    c.bench_function(
        "routing decision (64 IPs, 10k sites, 10% blocked, 2 listed)",
        |b| {
            b.iter(|| {
                n = (n + 7919) % SITES;
                let site = &sites[n];
                let pick = pool.next_for(dest, |e: &EgressIp| {
                    e.ip.map_or(Standing::Clean, |ip| reputation.claim(ip, site))
                });
                black_box(pick)
            })
        },
    );
}

fn classification(c: &mut Criterion) {
    #[derive(serde::Deserialize)]
    struct Table {
        case: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        reply: String,
    }
    let table: Table = toml::from_str(include_str!("../tests/data/replies.toml")).unwrap();
    // The table and the evaluation corpus: replies that fall through most rules included.
    let corpus =
        sidestep::classify::eval::parse_corpus(include_str!("../tests/data/eval.jsonl")).unwrap();
    let replies: Vec<_> = table
        .case
        .iter()
        .map(|c| c.reply.as_str())
        .chain(corpus.iter().map(|c| c.reply.as_str()))
        .map(parse_reply)
        .collect();
    let classifier = Classifier::builtin().unwrap();
    let mut n = 0usize;
    c.bench_function("classify one reply (mixed real replies)", |b| {
        b.iter(|| {
            n = (n + 1) % replies.len();
            let r = &replies[n];
            black_box(classifier.classify(r.code, &r.enhanced, &r.text))
        })
    });
}

fn command_parsing(c: &mut Criterion) {
    let lines: [&[u8]; 4] = [
        b"MAIL FROM:<newsletter@sender.example> SIZE=10240 BODY=8BITMIME\r\n",
        b"RCPT TO:<subscriber.name@destination.example>\r\n",
        b"EHLO mta1.sender.example\r\n",
        b"DATA\r\n",
    ];
    let mut g = c.benchmark_group("smtp");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("parse MAIL, RCPT, EHLO, DATA and the addresses", |b| {
        b.iter(|| {
            for line in lines {
                let req = smtp_proto::Request::parse(&mut black_box(line).iter()).unwrap();
                match req {
                    smtp_proto::Request::Mail { from } => {
                        black_box(
                            sidestep::envelope::Address::parse(&from.address, false).unwrap(),
                        );
                    }
                    smtp_proto::Request::Rcpt { to } => {
                        black_box(sidestep::envelope::Address::parse(&to.address, false).unwrap());
                    }
                    other => {
                        black_box(other);
                    }
                }
            }
        })
    });
    // DATA ingestion: dot-unstuffing to the terminator plus the bare CR/LF check, over
    // 1 MiB arriving in 64 KiB reads, as the session does it.
    let mut body = Vec::with_capacity(1 << 20);
    while body.len() < (1 << 20) - 80 {
        body.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n",
        );
        if body.len() % 7 == 0 {
            body.extend_from_slice(b"..a line that starts with a dot\r\n");
        }
    }
    body.extend_from_slice(b".\r\n");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("DATA ingestion (1 MiB)", |b| {
        b.iter(|| {
            let mut rx = smtp_proto::request::receiver::DataReceiver::new();
            rx.ingest(&mut b"\r\n".iter(), &mut Vec::new());
            let mut out = Vec::with_capacity(body.len());
            let mut done = false;
            for chunk in body.chunks(64 * 1024) {
                done = rx.ingest(&mut chunk.iter(), &mut out);
            }
            assert!(done);
            black_box(sidestep::inbound::policy::has_bare_cr_or_lf(&out))
        })
    });
    g.finish();
}

/// A 10 KiB newsletter with the fields a bulk sender sends.
fn newsletter() -> Vec<u8> {
    let mut m = String::from(
        "Received: from mta.example.net ([192.0.2.1])\r\n\tby relay.example.net (sidestep) with ESMTP id 0;\r\n\tThu, 3 Dec 2026 10:00:00 +0000\r\n\
         From: News <news@example.net>\r\nTo: reader@example.org\r\nSubject: This week\r\n\
         Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <n1@example.net>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         List-Unsubscribe: <https://example.net/u?1>, <mailto:u@example.net>\r\n\
         List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nFeedback-ID: 7:news:esp\r\n\r\n",
    );
    while m.len() < 10 * 1024 {
        m.push_str("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n");
    }
    m.into_bytes()
}

/// A signer with one new key of `algorithm` for example.net, its file in `dir`.
fn signer(dir: &std::path::Path, algorithm: DkimAlgorithm) -> Signer {
    use std::os::unix::fs::OpenOptionsExt;
    let key = keygen::generate(algorithm, 2048).unwrap();
    let path = dir.join(algorithm.name());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, key.pem.as_bytes()).unwrap();
    let config = DkimConfig {
        sign: Default::default(),
        keys: vec![DkimKeyConfig {
            domain: "example.net".into(),
            selector: "s1".into(),
            private_key: path,
            algorithm,
            subdomains: false,
        }],
    };
    Signer::load(&config).map_err(|e| format!("{e:?}")).unwrap()
}

fn dkim_signing(c: &mut Criterion) {
    let message = newsletter();
    c.bench_function("content/parse header block (10 KiB newsletter)", |b| {
        b.iter(|| Headers::parse(black_box(&message)))
    });
    let dir = tempfile::tempdir().unwrap();
    for (name, algorithm) in [
        ("ed25519", DkimAlgorithm::Ed25519Sha256),
        ("rsa-2048", DkimAlgorithm::RsaSha256),
    ] {
        let signer = signer(dir.path(), algorithm);
        c.bench_function(&format!("dkim/sign {name} (10 KiB, headers parsed)"), |b| {
            b.iter(|| {
                let headers = Headers::parse(black_box(&message));
                let plan = signer.plan(&headers).unwrap();
                plan.sign(&message).unwrap()
            })
        });
    }
}

/// 10,000 recipient domains with cached MTA-STS state (every tenth an `enforce` policy,
/// the rest "no policy"), read from the spool as after a restart; DNSSEC off, so DANE
/// costs its one flag check. The lookup a delivery makes: `domain` once, `host` for the
/// MX host it connects to (for a policy that includes the TLS client it builds).
fn tls_policy_lookup(c: &mut Criterion) {
    use sidestep::tls_policy::{StsEntry, StsMode, StsPolicy, TlsPolicies};
    let dir = tempfile::tempdir().unwrap();
    let clock = sidestep::clock::Clock::system();
    let now = clock.now();
    let entries: std::collections::HashMap<String, StsEntry> = (0..SITES)
        .map(|i| {
            let policy = i.is_multiple_of(10).then(|| StsPolicy {
                mode: StsMode::Enforce,
                mx: vec![format!("mx.d{i}.bench.test")],
                max_age: 86_400,
            });
            let entry = StsEntry {
                id: policy.as_ref().map(|_| "1".to_string()),
                policy,
                fetched_at: now,
                expires_at: now + 86_400,
                checked_at: now,
                error: None,
            };
            (format!("d{i}.bench.test"), entry)
        })
        .collect();
    std::fs::write(
        dir.path().join("mta-sts.json"),
        serde_json::to_vec(&entries).unwrap(),
    )
    .unwrap();
    let config = sidestep::config::Config::parse(
        "[dns]\nnameservers = [\"127.0.0.1:9\"]\ndnssec = false\n[tls_policy]\nrecheck = \"1d\"\n",
    )
    .unwrap();
    let resolver = sidestep::dns::Resolver::new(&config.dns).unwrap();
    let policies =
        TlsPolicies::new(&config, resolver, Some(dir.path().to_path_buf()), clock).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("tls_policy");
    group.throughput(Throughput::Elements(1));
    for (name, i) in [("no_policy", 1), ("sts_enforce", 0)] {
        let domain = format!("d{i}.bench.test");
        let mx = format!("mx.d{i}.bench.test");
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let d = policies.domain(black_box(&domain)).await;
                    black_box(policies.host(&d, &mx).await.is_ok())
                })
            })
        });
    }
    group.finish();
}

/// The VERP return path's cost per recipient: the token made at each attempt, and
/// read and verified when a bounce comes back.
fn verp_token(c: &mut Criterion) {
    use sidestep::returnpath::{ReturnPath, Token};
    let rp = ReturnPath::new(
        b"a secret of 32 bytes, for bench",
        "bounces.example.net",
        Vec::new(),
    );
    let token = Token {
        queue_id: "0006400A1B2C3D001ABC".into(),
        recipient: 0,
        attempt: 0,
        egress: Some(egress_ip(1)),
    };
    let rcpt = "subscriber.name@example.com";
    c.bench_function("verp/make return path", |b| {
        b.iter(|| rp.address(black_box(&token), rcpt, "bounces.example.net"))
    });
    let address = rp.address(&token, rcpt, "bounces.example.net").unwrap();
    let local = address.split('@').next().unwrap().to_string();
    c.bench_function("verp/read and verify token", |b| {
        b.iter(|| {
            let t = ReturnPath::read(black_box(&local)).unwrap();
            rp.verify(&t, rcpt)
        })
    });
}

criterion_group!(
    benches,
    routing,
    classification,
    command_parsing,
    dkim_signing,
    tls_policy_lookup,
    verp_token
);
criterion_main!(benches);

use std::collections::HashSet;

use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
struct Table {
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    reply: String,
    verdict: Verdict,
    source: String,
}

/// The shipped rules against real replies from public sources (tests/data/replies.toml).
#[test]
fn shipped_rules_classify_real_replies() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/replies.toml");
    let table: Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let classifier = Classifier::builtin().unwrap();
    let mut wrong = Vec::new();
    let mut seen = HashSet::new();
    for case in &table.case {
        assert!(
            case.source.starts_with("http"),
            "case without a source: {}",
            case.reply
        );
        let r = parse_reply(&case.reply);
        let got = classifier.classify(r.code, &r.enhanced, &r.text);
        seen.insert(case.verdict);
        if got.verdict != case.verdict {
            wrong.push(format!(
                "{} (rule {}) != {}: {}",
                got.verdict, got.rule, case.verdict, case.reply
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} misclassified:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(table.case.len() >= 60, "only {} cases", table.case.len());
    for v in Verdict::ALL {
        assert!(seen.contains(&v), "no case exercises {v}");
    }
}

#[test]
fn operator_rules_come_first() {
    let op = RuleConfig {
        name: "ours".into(),
        verdict: Verdict::Throttle,
        pattern: "blocked using csi".into(),
        codes: vec!["5".into()],
    };
    let c = Classifier::new(&[op]).unwrap();
    let got = c.classify(550, "5.7.1", "Client host [192.0.2.1] blocked using CSI");
    assert_eq!(
        (got.verdict, got.rule.as_str()),
        (Verdict::Throttle, "ours")
    );
    // The code filter keeps it off 4xx replies.
    let got = c.classify(421, "4.7.1", "blocked using CSI");
    assert_eq!(got.verdict, Verdict::IpReputation);
    let bad = RuleConfig {
        name: "broken".into(),
        verdict: Verdict::Policy,
        pattern: "(unclosed".into(),
        codes: vec![],
    };
    assert!(matches!(
        Classifier::new(&[bad]),
        Err(ClassifyError::Pattern { .. })
    ));
}

#[test]
fn replies_are_normalised() {
    let r = parse_reply("smtp; 550-5.7.1 first line\r\n550-5.7.1   second\n550 5.7.1 third");
    assert_eq!(
        r,
        ParsedReply {
            code: 550,
            enhanced: "5.7.1".into(),
            text: "first line second third".into()
        }
    );
    let r = parse_reply("421, \"4.7.0\", text");
    assert_eq!(
        (r.code, r.enhanced.as_str(), r.text.as_str()),
        (421, "4.7.0", "text")
    );
    let r = parse_reply("451 try later");
    assert_eq!(
        (r.code, r.enhanced.as_str(), r.text.as_str()),
        (451, "", "try later")
    );
}

#[test]
fn fallbacks_follow_the_codes() {
    let c = Classifier::builtin().unwrap();
    let v = |code, e: &str| c.classify(code, e, "no rule matches this").verdict;
    assert_eq!(v(250, "2.0.0"), Verdict::Delivered);
    assert_eq!(v(451, "4.3.0"), Verdict::Transient);
    assert_eq!(v(0, "4.4.1"), Verdict::Transient);
    assert_eq!(v(550, "5.1.2"), Verdict::Recipient);
    assert_eq!(v(0, "5.1.2"), Verdict::Recipient);
    assert_eq!(v(0, "5.1.10"), Verdict::Recipient);
    assert_eq!(v(552, "5.2.3"), Verdict::Message);
    assert_eq!(v(554, "5.7.1"), Verdict::Policy);
    assert_eq!(v(0, "5.6.7"), Verdict::Message);
    assert_eq!(v(554, ""), Verdict::Message);
}

#[test]
fn verdict_names_round_trip() {
    for v in Verdict::ALL {
        assert_eq!(v.name().parse::<Verdict>().unwrap(), v);
    }
    assert_eq!(Verdict::IpReputation.retry(), Retry::OtherIp);
    assert_eq!(Verdict::IpReputation.blame(), Blame::EgressIp);
    assert!(Verdict::DomainReputation.is_permanent_failure());
    assert!(!Verdict::Greylist.is_permanent_failure());
}

#[test]
fn upper_case_patterns_stay_case_insensitive() {
    assert_eq!(rules::pattern(r"blocked using \S+"), r"blocked using \S+");
    assert_eq!(rules::pattern("Partner MX busy"), "(?i)Partner MX busy");
    let op = RuleConfig {
        name: "ours".into(),
        verdict: Verdict::Throttle,
        pattern: "Partner MX busy".into(),
        codes: vec![],
    };
    let c = Classifier::new(&[op]).unwrap();
    assert_eq!(
        c.classify(451, "4.3.0", "PARTNER mx BUSY, later").rule,
        "ours"
    );
}

/// The labelled corpus keeps its shape: an evaluation part big enough to mean something,
/// a third of it refusals of the sending IP from many receivers, every row sourced.
#[test]
fn corpus_parts_have_the_promised_shape() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
    let read = |name: &str| {
        eval::parse_corpus(&std::fs::read_to_string(format!("{dir}{name}")).unwrap()).unwrap()
    };
    let (dev, evaluation) = (read("corpus-dev.jsonl"), read("eval.jsonl"));
    assert!(evaluation.len() >= 200, "{} replies", evaluation.len());
    let ip: Vec<_> = evaluation
        .iter()
        .filter(|r| r.verdict == Verdict::IpReputation)
        .collect();
    assert!(ip.len() * 3 >= evaluation.len(), "{} IP refusals", ip.len());
    let receivers: HashSet<_> = ip.iter().filter_map(|r| r.receiver.as_deref()).collect();
    assert!(receivers.len() >= 15, "{receivers:?}");
    for r in dev.iter().chain(&evaluation) {
        assert!(r.source.is_some(), "no source: {}", r.reply);
    }
    let dev_replies: HashSet<_> = dev.iter().map(|r| r.reply.as_str()).collect();
    assert!(
        evaluation
            .iter()
            .all(|r| !dev_replies.contains(r.reply.as_str())),
        "a reply is in both parts"
    );
    // The rules are written against the development part: it is classified right.
    let e = eval::evaluate(&Classifier::builtin().unwrap(), &dev);
    assert_eq!(e.misses.len(), 0, "{:#?}", e.misses);
}

//! The bounce shapes of a public corpus (sisimai's set-of-emails, BSD-2; a selection in
//! `tests/data/bounces/sisimai/`): how many parse (a failure with a reply the classifier
//! can read) and resolve (a token made for the failed recipient verifies against what
//! the bounce names, as when the message's record is gone). The counts are printed
//! (`cargo test corpus -- --nocapture`) and held above a floor.

use std::path::Path;

use super::{Resolution, Shape, parse, resolve};
use crate::classify::Classifier;
use crate::returnpath::{ReturnPath, Token};

#[test]
fn the_corpus_bounces_parse_and_resolve() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bounces/sisimai");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    let classifier = Classifier::new(&[]).unwrap();
    let rp = ReturnPath::new(b"corpus test secret, 16+ bytes", "bounces.test", Vec::new());
    let (mut parsed, mut resolved, mut bounces, mut reports) = (0, 0, 0, 0);
    for path in &files {
        let raw = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let b = parse(&raw);
        if name.starts_with("arf-") {
            reports += 1;
            assert_eq!(b.shape, Shape::Arf, "{name}");
            continue;
        }
        bounces += 1;
        let Some(f) = b.failures.first().filter(|f| f.code >= 400) else {
            println!("{name}: NOT PARSED ({:?})", b.shape);
            continue;
        };
        parsed += 1;
        let verdict = classifier
            .classify(f.code, &f.enhanced, &f.diagnostic)
            .verdict;
        let rcpt = f.recipient.clone().or_else(|| b.addresses.first().cloned());
        let resolves = rcpt.as_ref().is_some_and(|rcpt| {
            let address = rp
                .address(
                    &Token {
                        queue_id: "0006400A1B2C3D001ABC".into(),
                        recipient: 0,
                        attempt: 0,
                        egress: Some("192.0.2.11".parse().unwrap()),
                    },
                    rcpt,
                    "bounces.test",
                )
                .unwrap();
            let token = ReturnPath::read(address.split('@').next().unwrap()).unwrap();
            matches!(
                resolve(&rp, &token, None, &b.named()),
                Resolution::Resolved(_)
            )
        });
        resolved += usize::from(resolves);
        println!(
            "{name}: {:?} {} {} {verdict} rcpt={} resolved={resolves} diagnostic={:?}",
            b.shape,
            f.code,
            f.enhanced,
            rcpt.as_deref().unwrap_or("-"),
            f.diagnostic.chars().take(80).collect::<String>()
        );
    }
    println!(
        "corpus: {parsed}/{bounces} bounces parse, {resolved}/{bounces} resolve; {reports} ARF reports recognised"
    );
    assert!(reports >= 4);
    assert!(
        parsed * 10 >= bounces * 8,
        "{parsed}/{bounces} parse: fewer than 80%"
    );
    assert!(
        resolved * 10 >= bounces * 8,
        "{resolved}/{bounces} resolve: fewer than 80%"
    );
}

use std::io::BufRead;
use std::path::Path;

use serde::Serialize;

use crate::classify::{Classifier, parse_reply};

#[derive(Serialize)]
struct Line<'a> {
    verdict: &'a str,
    rule: &'a str,
    code: u16,
    enhanced: &'a str,
    reply: &'a str,
}

/// `sidestep classify [REPLY]`: the verdict for a reply and the rule that matched; one
/// reply per line from stdin when no argument is given.
pub fn classify(config_path: Option<&Path>, reply: Option<&str>, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let classifier = Classifier::new(&config.classify.rules)?;
    let show = |raw: &str| {
        let r = parse_reply(raw);
        let c = classifier.classify(r.code, &r.enhanced, &r.text);
        if json {
            let line = Line {
                verdict: c.verdict.name(),
                rule: &c.rule,
                code: r.code,
                enhanced: &r.enhanced,
                reply: raw,
            };
            println!("{}", serde_json::to_string(&line).expect("serializes"));
        } else {
            println!("{}\t{}", c.verdict, c.rule);
        }
    };
    match reply {
        Some(r) => show(r),
        None => {
            for line in std::io::stdin().lock().lines() {
                let line = line?;
                if !line.trim().is_empty() {
                    show(&line);
                }
            }
        }
    }
    Ok(())
}

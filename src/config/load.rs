//! Turning the file into a [`Config`], reporting every schema problem in one run.
//!
//! serde stops at the first unknown key or bad value. An operator fixing a file one
//! error per run is slow, so after each error the offending line (or the whole unknown
//! table) is set aside and the rest is parsed again, until it parses. Each problem is
//! reported with its line and dotted key, found from the error's position in the text.

use std::path::Path;

use super::{Config, ConfigError, LoadError};

/// More problems than this in one file: the rest are not worth listing.
const MAX_PROBLEMS: usize = 64;

/// Parses `text`, collecting every schema problem.
///
/// # Errors
/// The text is not TOML (one error: the syntax must be fixed first), or has keys or
/// values the schema refuses (all of them).
pub fn parse(text: &str, path: &Path) -> Result<Config, LoadError> {
    match parse_collecting(text, path)? {
        (config, problems) if problems.is_empty() => Ok(config),
        (_, errors) => Err(LoadError::Schema {
            path: path.to_path_buf(),
            errors,
        }),
    }
}

/// Parses what the schema accepts and lists what it refuses, so that `check-config` can
/// also validate the rest.
///
/// # Errors
/// The text is not TOML.
pub fn parse_collecting(text: &str, path: &Path) -> Result<(Config, Vec<ConfigError>), LoadError> {
    let mut lines: Vec<Option<&str>> = text.split('\n').map(Some).collect();
    let mut problems = Vec::new();
    loop {
        let current: String = lines
            .iter()
            .map(|l| l.unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let err = match toml::from_str::<Config>(&current) {
            Ok(mut config) => {
                normalize(&mut config);
                return Ok((config, in_file_order(problems)));
            }
            Err(e) => e,
        };
        // A syntax error (not a schema one) ends the search: the file must be fixed
        // first.
        let span = match err.span() {
            Some(span) if toml::from_str::<toml::Table>(&current).is_ok() => span,
            _ => return Err(syntax(path, &err, in_file_order(problems))),
        };
        let first = current[..span.start].matches('\n').count();
        let last = first + current[span.start..span.end].matches('\n').count();
        problems.push((
            first,
            ConfigError {
                key: format!("{} (line {})", key_at(&lines, first), first + 1),
                problem: super::words::plain(err.message()),
            },
        ));
        if problems.len() >= MAX_PROBLEMS {
            return Ok((Config::default(), in_file_order(problems)));
        }
        // Set aside what was refused: an unknown table with everything in it, else the
        // lines of the refused key or value.
        let header = lines[first].is_some_and(|l| table_name(l).is_some());
        let end = if header {
            (first + 1..lines.len())
                .find(|&i| lines[i].is_some_and(|l| table_name(l).is_some()))
                .unwrap_or(lines.len())
        } else {
            last + 1
        };
        let before = lines.iter().filter(|l| l.is_some()).count();
        let end = end.min(lines.len());
        for l in &mut lines[first..end] {
            *l = None;
        }
        if lines.iter().filter(|l| l.is_some()).count() == before {
            // Nothing left to set aside: report what we have.
            return Ok((Config::default(), in_file_order(problems)));
        }
    }
}

/// What is compared per delivery is put in one form once, here.
fn normalize(config: &mut Config) {
    for route in &mut config.routes {
        for d in &mut route.domains {
            *d = d.trim_end_matches('.').to_ascii_lowercase();
        }
    }
}

fn in_file_order(mut problems: Vec<(usize, ConfigError)>) -> Vec<ConfigError> {
    problems.sort_by_key(|(line, _)| *line);
    problems.into_iter().map(|(_, e)| e).collect()
}

fn syntax(path: &Path, err: &toml::de::Error, mut problems: Vec<ConfigError>) -> LoadError {
    if problems.is_empty() {
        return LoadError::Parse {
            path: path.to_path_buf(),
            message: err.to_string(),
        };
    }
    problems.push(ConfigError {
        key: "(file)".into(),
        problem: err.to_string(),
    });
    LoadError::Schema {
        path: path.to_path_buf(),
        errors: problems,
    }
}

/// The line (0-based) that sets `key`, a validation key path such as
/// `queue.retry_factor`, `pools[1].egress[0].ip` or `dns.nameservers[2]`: the key's own
/// line, else the closest enclosing key or table that is in the file. `None` when
/// nothing of it is (a default value).
pub(super) fn line_of(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut wanted = key.to_string();
    loop {
        if let Some(at) = find_line(&lines, &wanted) {
            return Some(at);
        }
        wanted = parent_key(&wanted)?;
    }
}

/// `a.b[2]` → `a.b`; `a.b."x.y"` → `a.b`; `a.b` → `a`; `a` → none.
fn parent_key(key: &str) -> Option<String> {
    if key.ends_with(']') {
        return key.rfind('[').map(|i| key[..i].to_string());
    }
    if let Some(quoted) = key.strip_suffix('"') {
        let open = quoted.rfind('"')?;
        return Some(key[..open].trim_end_matches('.').to_string());
    }
    key.rfind('.').map(|i| key[..i].to_string())
}

/// The line whose table header or key is exactly `wanted`, array tables counted
/// (`[[pools]]` twice: `pools[0]`, `pools[1]`).
fn find_line(lines: &[&str], wanted: &str) -> Option<usize> {
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut table = String::new();
    for (at, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if let Some(name) = table_name(trimmed) {
            // Each segment that is an array of tables takes its current index.
            let mut path = String::new();
            let segments: Vec<&str> = name.split('.').map(str::trim).collect();
            for (i, seg) in segments.iter().enumerate() {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(seg);
                let last = i + 1 == segments.len();
                if last && trimmed.starts_with("[[") {
                    let n = counts.entry(path.clone()).or_insert(0);
                    path.push_str(&format!("[{n}]"));
                    *n += 1;
                } else if let Some(n) = counts.get(&path) {
                    path.push_str(&format!("[{}]", n.saturating_sub(1)));
                }
            }
            table = path;
            if table == wanted {
                return Some(at);
            }
            continue;
        }
        let Some((k, _)) = trimmed.split_once('=') else {
            continue;
        };
        let k = k.trim();
        let full = if table.is_empty() {
            k.to_string()
        } else {
            format!("{table}.{k}")
        };
        if full == wanted {
            return Some(at);
        }
    }
    None
}

/// `server` for `[server]`, `pools` for `[[pools]]`, `pools.egress` for
/// `[[pools.egress]]`.
fn table_name(line: &str) -> Option<&str> {
    let l = line.trim();
    let inner = l.strip_prefix("[[").and_then(|r| r.split("]]").next());
    let inner = inner.or_else(|| l.strip_prefix('[').and_then(|r| r.split(']').next()))?;
    Some(inner.trim())
}

/// The dotted key on line `at`: the table in effect there and the key the line sets.
fn key_at(lines: &[Option<&str>], at: usize) -> String {
    let line = lines[at].unwrap_or("");
    if let Some(t) = table_name(line) {
        return t.to_string();
    }
    let table = lines[..at]
        .iter()
        .rev()
        .filter_map(|l| l.and_then(table_name))
        .next();
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('"') && !k.contains(' '));
    match (table, key) {
        (Some(t), Some(k)) if line.contains('=') => format!("{t}.{k}"),
        (None, Some(k)) if line.contains('=') => k.to_string(),
        (Some(t), _) => t.to_string(),
        (None, _) => "(top level)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse(text, Path::new("t.toml")) {
            Err(LoadError::Schema { errors, .. }) => errors.iter().map(|e| e.to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_unknown_key_and_bad_value_in_one_run() {
        let text = "[server]\nmax_sesions = 3\nmax_recipients = \"many\"\n\n[bogus]\nx = 1\ny = 2\n\n[queue]\nretry_initial = \"banana\"\ncolour = \"red\"\n\n[[pools]]\nname = \"p\"\n[[pools.egress]]\nip = \"not-an-ip\"\n";
        let p = problems(text);
        assert_eq!(p.len(), 6, "{p:#?}");
        for (want, problem) in [
            ("server.max_sesions (line 2)", "unknown field `max_sesions`"),
            ("server.max_recipients (line 3)", "invalid type"),
            ("bogus (line 5)", "unknown field `bogus`"),
            ("queue.retry_initial (line 10)", "banana"),
            ("queue.colour (line 11)", "unknown field `colour`"),
            ("pools.egress.ip (line 16)", "invalid IP address"),
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(want) && l.contains(problem)),
                "{want}: {p:#?}"
            );
        }
    }

    #[test]
    fn a_validation_key_is_found_on_its_line() {
        let text = "# c\n[queue]\nretry_factor = 0.5\n\n[[pools]]\nname = \"a\"\n[[pools.egress]]\nip = \"127.0.0.2\"\n[[pools]]\nname = \"b\"\n[[pools.egress]]\nip = \"127.0.0.3\"\n[[pools.egress]]\nip = \"127.0.0.4\"\n[dns]\nnameservers = [\"1.1.1.1:0\"]\n";
        for (key, line) in [
            ("queue.retry_factor", Some(3)),
            ("pools[0].name", Some(6)),
            ("pools[1].egress[1].ip", Some(14)),
            ("pools[1].egress[1].helo", Some(13)),
            ("dns.nameservers[0]", Some(16)),
            ("delivery.pool", None),
        ] {
            assert_eq!(line_of(text, key).map(|l| l + 1), line, "{key}");
        }
    }

    #[test]
    fn a_good_file_parses_and_a_syntax_error_is_one_error() {
        assert!(parse("[server]\nmax_sessions = 3\n", Path::new("t")).is_ok());
        assert!(matches!(
            parse("[server\nx = ", Path::new("t")),
            Err(LoadError::Parse { .. })
        ));
    }
}

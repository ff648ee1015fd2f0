//! `sidestep passwd NAME`: the line to add to `[auth] users_file` for a user.

use std::io::{BufRead, IsTerminal, Write};

/// Reads the password (from the terminal without echo, twice; or one line of stdin) and
/// prints `NAME:$argon2id$…`, with `:DOMAINS` when given.
pub fn passwd(name: &str, domains: &[String]) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        anyhow::bail!("a user name has no ':' and no spaces");
    }
    let password = if std::io::stdin().is_terminal() {
        let first = prompt("Password: ")?;
        let again = prompt("Again: ")?;
        if first != again {
            anyhow::bail!("the two passwords differ");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        anyhow::bail!("an empty password is not accepted");
    }
    let mut line = crate::inbound::users::hash_line(name, &password)?;
    if !domains.is_empty() {
        line.push(':');
        line.push_str(&domains.join(","));
    }
    println!("{line}");
    Ok(())
}

/// One line from the terminal with echo off.
fn prompt(text: &str) -> anyhow::Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    eprint!("{text}");
    std::io::stderr().flush()?;
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    tcsetattr(&stdin, OptionalActions::Now, &saved)?;
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

//! # sidestep
//!
//! An outbound SMTP relay that keeps mail flowing when one of its egress IPs lands on a
//! blocklist. It accepts mail from an MTA or a newsletter tool, spools it durably, and
//! delivers it to each recipient's MX from a rotating pool of egress IPs.
//!
//! # Layout — the pipeline, module by module, in flow order
//!
//! Vocabulary every stage shares (leaves: they use nothing of the pipeline):
//!
//! - [`config`]: the operator's TOML file, defaults and validation.
//! - [`clock`]: Unix time as records keep it, and a clock tests can move by hand.
//! - [`envelope`]: addresses, sender, body flags — the values that travel the pipeline.
//! - [`content`]: the accepted message's header block, read once: From: domain, existing
//!   signatures, bulk-mail fields.
//! - [`dns`]: the resolver (MX, addresses, DNSBL queries), system or configured servers.
//! - [`site`]: recipient domains that share MX hosts, as reputation sees them.
//! - [`egress`]: the local addresses mail leaves from, and their standing.
//! - [`tls`]: verifying TLS clients for the connections the relay opens itself.
//! - [`metrics`]: Prometheus counters each stage bumps, served by the admin API.
//! - [`returnpath`]: the VERP envelope sender of each attempt, whose HMAC token ties a
//!   late bounce to the message, recipient, egress IP and attempt.
//! - [`suppression`]: addresses that hard-bounced, refused at RCPT until they expire.
//! - [`alerts`]: listings, blocks and authentication failures POSTed to the operator's
//!   webhook, and handed as events to whoever mails them (`serve` queues them).
//!
//! The pipeline, each stage using only the ones after it and the vocabulary:
//!
//! - [`inbound`]: the SMTP listener and session state machine; relay permission; the
//!   bulk-mail check at the end of DATA.
//! - [`signing`]: DKIM keys and the signatures made once, at acceptance, before spooling.
//! - [`spool`]: durable storage; a `250` is sent only after the message is fsynced.
//! - [`queue`]: the scheduler owning every due time, retry math, DSNs.
//! - [`routing`]: MX lookup, sites (domains sharing MX hosts), the egress pool rotation.
//! - [`authorisation`]: which egress IPs (and smarthosts) SPF authorises for a sender
//!   domain, and what receivers' authentication refusals taught; read by routing
//!   before it picks an IP, taught by the queue.
//! - [`tls_policy`]: what each destination requires of the outbound hop's TLS
//!   (MTA-STS, DANE under DNSSEC), cached in the spool, and the sessions counted for
//!   the daily TLS reports (TLS-RPT); read by outbound for every session.
//! - [`outbound`]: the SMTP client, one transaction per (message, domain), from an egress
//!   IP or through a fallback smarthost.
//! - [`classify`]: reply → verdict, the one place deciding what a result means (rules
//!   are data: `config/classify.toml`).
//! - [`reputation`]: what we know of our egress IPs — DNSBL listings (checked
//!   proactively) and blocks (learned from verdicts that blame the IP) — which routing
//!   reads for every connection.
//! - [`senders`]: who hands mail in — per-hour quotas, and the suspension of a sender
//!   whose mail looks like a hacked account's (fed by verdicts, read by inbound).
//! - [`probes`]: seed probes from each egress IP to the operator's seed mailboxes; a
//!   probe accepted and never seen marks a silent discard (fed to reputation).
//! - [`complaints`]: feedback-loop (ARF) reports read from an IMAP mailbox, counted per
//!   sender and egress IP (fed to the senders' suspension).
//! - [`bounces`]: mail to the bounce domains — DSNs, non-standard bounces and ARF
//!   reports — read, tied to what drew them by the return-path token, and fed to
//!   reputation (late blocks), the suppression list and the complaint counts.
//! - [`cluster`]: several nodes sharing reputation, suspensions and limits through Redis.
//! - [`admin`]: the HTTP API the CLI and the operator use on a running relay.
//! - [`cli`]: the `sidestep` subcommands.

#![warn(missing_docs)]

pub mod admin;
pub mod alerts;
pub mod authorisation;
pub mod bounces;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod complaints;
pub mod config;
pub mod content;
pub mod dns;
pub mod egress;
pub mod envelope;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod probes;
pub mod queue;
pub mod reputation;
pub mod returnpath;
pub mod routing;
pub mod senders;
pub mod signing;
pub mod site;
pub mod spool;
pub mod suppression;
pub mod tls;
pub mod tls_policy;

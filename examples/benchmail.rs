//! The benchmarks' mail source and sink, for the realistic scenario that Postfix's
//! smtp-source and smtp-sink cannot play: many recipient domains, 1–5 recipients per
//! message, a mix of sizes, receivers that refuse one sending IP, and a count of every
//! (message, recipient) delivery so that "exactly once" is checked, not assumed.
//!
//!   benchmail sink --addrs 127.1.0.1-127.1.0.100 --port P --status FILE
//!                  [--refuse 127.1.0.1=127.0.0.2,...] [--times FILE]
//!   benchmail source --target 127.0.0.1:25 --messages N --sessions S --domains 1000
//!                  [--rcpts 1-5] [--min-size 2048] [--max-size 102400] [--rate R] [--times FILE]
//!   benchmail latency --sent FILE --delivered FILE
//!
//! Loopback only: the sink binds the addresses it is given (127.x), the source connects
//! where it is told. Not part of the relay; built with `cargo build --release --examples`.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receives mail on many addresses, counting deliveries per (message, recipient).
    Sink {
        /// Addresses to listen on: a list, or a range of the last octet (127.1.0.1-127.1.0.100).
        #[arg(long)]
        addrs: String,
        #[arg(long)]
        port: u16,
        /// Where to write "deliveries duplicates connections refusals" ten times a second
        /// (refusals: RCPTs refused by `--refuse`; a relay that bounces them instead of
        /// moving them to another IP delivers that many copies fewer).
        #[arg(long)]
        status: PathBuf,
        /// `listen=client,...`: the server on `listen` refuses RCPT from `client` with a
        /// Spamhaus-style reputation reply.
        #[arg(long, default_value = "")]
        refuse: String,
        /// Append "id unix-µs" per delivered message here (for latency).
        #[arg(long)]
        times: Option<PathBuf>,
    },
    /// Sends generated mail over concurrent sessions; prints the rate and the number of
    /// deliveries to expect.
    Source {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        messages: u64,
        #[arg(long, default_value_t = 20)]
        sessions: u64,
        /// Recipient domains d0.bench.test … d{N-1}.bench.test.
        #[arg(long, default_value_t = 1000)]
        domains: u64,
        /// Use only this one domain instead (e.g. for a latency probe).
        #[arg(long)]
        domain: Option<String>,
        /// Recipients per message, `min-max`.
        #[arg(long, default_value = "1-5")]
        rcpts: String,
        #[arg(long, default_value_t = 2048)]
        min_size: usize,
        #[arg(long, default_value_t = 102_400)]
        max_size: usize,
        /// Messages per second over all sessions (default: as fast as accepted).
        #[arg(long)]
        rate: Option<f64>,
        /// Append "id unix-µs" per message at the end of its DATA.
        #[arg(long)]
        times: Option<PathBuf>,
        /// Message ids start here (runs that share a sink must not reuse ids).
        #[arg(long, default_value_t = 0)]
        first_id: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// p50/p99/max of delivered − sent over the ids in both files.
    Latency {
        #[arg(long)]
        sent: PathBuf,
        #[arg(long)]
        delivered: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Sink {
            addrs,
            port,
            status,
            refuse,
            times,
        } => rt.block_on(sink(parse_addrs(&addrs)?, port, status, &refuse, times)),
        Command::Source {
            target,
            messages,
            sessions,
            domains,
            domain,
            rcpts,
            min_size,
            max_size,
            rate,
            times,
            first_id,
            seed,
        } => {
            let (lo, hi) = rcpts
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .context("--rcpts min-max")?;
            let plan = Plan {
                messages,
                domains,
                domain,
                rcpts: (lo, hi),
                sizes: (min_size.max(512), max_size.max(min_size)),
                rate,
                first_id,
                seed,
            };
            rt.block_on(source(target, sessions, plan, times))
        }
        Command::Latency { sent, delivered } => latency(&sent, &delivered),
    }
}

fn parse_addrs(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        if let Some((first, last)) = part.split_once('-') {
            let first: std::net::Ipv4Addr = first.parse()?;
            let last: u8 = last.rsplit('.').next().unwrap_or(last).parse()?;
            let o = first.octets();
            for n in o[3]..=last {
                out.push(IpAddr::from([o[0], o[1], o[2], n]));
            }
        } else {
            out.push(part.parse()?);
        }
    }
    if out.is_empty() {
        bail!("no addresses in {spec:?}");
    }
    Ok(out)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    seen: HashSet<(u64, String)>,
    deliveries: u64,
    duplicates: u64,
    times: Vec<(u64, u64)>,
}

struct SinkState {
    tally: Mutex<Tally>,
    connections: AtomicU64,
    refusals: AtomicU64,
    refuse: HashSet<(IpAddr, IpAddr)>,
}

async fn sink(
    addrs: Vec<IpAddr>,
    port: u16,
    status: PathBuf,
    refuse: &str,
    times: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut refused = HashSet::new();
    for pair in refuse.split(',').filter(|p| !p.is_empty()) {
        let (listen, client) = pair.split_once('=').context("--refuse listen=client")?;
        refused.insert((listen.parse()?, client.parse()?));
    }
    let state = Arc::new(SinkState {
        tally: Mutex::new(Tally::default()),
        connections: AtomicU64::new(0),
        refusals: AtomicU64::new(0),
        refuse: refused,
    });
    for addr in addrs {
        let listener = TcpListener::bind((addr, port))
            .await
            .with_context(|| format!("bind {addr}:{port}"))?;
        let state = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                state.connections.fetch_add(1, Ordering::Relaxed);
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, addr, peer.ip(), &state).await;
                });
            }
        });
    }
    let mut times_file = match &times {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        )),
        None => None,
    };
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (line, new_times) = {
            let mut t = state.tally.lock().unwrap_or_else(|e| e.into_inner());
            (
                format!(
                    "{} {} {} {}\n",
                    t.deliveries,
                    t.duplicates,
                    state.connections.load(Ordering::Relaxed),
                    state.refusals.load(Ordering::Relaxed)
                ),
                std::mem::take(&mut t.times),
            )
        };
        if let Some(f) = times_file.as_mut() {
            for (id, at) in new_times {
                writeln!(f, "{id} {at}")?;
            }
            f.flush()?;
        }
        let tmp = status.with_extension("tmp");
        std::fs::write(&tmp, line)?;
        std::fs::rename(&tmp, &status)?;
    }
}

async fn serve(
    stream: TcpStream,
    local: IpAddr,
    peer: IpAddr,
    state: &SinkState,
) -> anyhow::Result<()> {
    let refuses = state.refuse.contains(&(local, peer));
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    write.write_all(b"220 sink.bench.test ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(512);
    let mut rcpts: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(1024);
    // The BDAT chunks of the message under way.
    let mut chunks: Vec<u8> = Vec::new();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with(b"EHLO") {
            out.extend_from_slice(b"250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n");
        } else if upper.starts_with(b"HELO") {
            out.extend_from_slice(b"250 sink.bench.test\r\n");
        } else if upper.starts_with(b"MAIL") {
            rcpts.clear();
            out.extend_from_slice(b"250 2.1.0 Ok\r\n");
        } else if upper.starts_with(b"RCPT") {
            if refuses {
                state.refusals.fetch_add(1, Ordering::Relaxed);
                out.extend_from_slice(format!("550 5.7.1 Service unavailable; Client host [{peer}] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/{peer}\r\n").as_bytes());
            } else {
                let text = String::from_utf8_lossy(&line);
                let addr = text
                    .split_once('<')
                    .and_then(|(_, r)| r.split_once('>'))
                    .map(|(a, _)| a.to_ascii_lowercase())
                    .unwrap_or_default();
                rcpts.push(addr);
                out.extend_from_slice(b"250 2.1.5 Ok\r\n");
            }
        } else if upper.starts_with(b"DATA") {
            if rcpts.is_empty() {
                out.extend_from_slice(b"554 5.5.1 No valid recipients\r\n");
            } else {
                write.write_all(&out).await?;
                out.clear();
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let id = read_message(&mut read, &mut line).await?;
                state.record(id, rcpts.drain(..));
                out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
            }
        } else if upper.starts_with(b"BDAT") {
            // RFC 3030: the chunk is read whatever the envelope's fate.
            let text = String::from_utf8_lossy(&line).to_string();
            let mut words = text.split_ascii_whitespace().skip(1);
            let Some(size) = words.next().and_then(|w| w.parse::<usize>().ok()) else {
                bail!("BDAT without a size");
            };
            let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
            let start = chunks.len();
            chunks.resize(start + size, 0);
            read.read_exact(&mut chunks[start..]).await?;
            if !last {
                out.extend_from_slice(b"250 2.0.0 chunk ok\r\n");
            } else if rcpts.is_empty() {
                chunks.clear();
                out.extend_from_slice(b"554 5.5.1 No valid recipients\r\n");
            } else {
                let id = bench_id(&chunks);
                chunks.clear();
                state.record(id, rcpts.drain(..));
                out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
            }
        } else if upper.starts_with(b"RSET") {
            rcpts.clear();
            chunks.clear();
            out.extend_from_slice(b"250 2.0.0 Ok\r\n");
        } else if upper.starts_with(b"NOOP") {
            out.extend_from_slice(b"250 2.0.0 Ok\r\n");
        } else if upper.starts_with(b"QUIT") {
            out.extend_from_slice(b"221 2.0.0 Bye\r\n");
            write.write_all(&out).await?;
            return Ok(());
        } else {
            out.extend_from_slice(b"502 5.5.2 Error: command not recognized\r\n");
        }
        // Answer a pipelined group at once, when nothing more is waiting.
        if read.buffer().is_empty() {
            write.write_all(&out).await?;
            out.clear();
        }
    }
}

impl SinkState {
    /// Counts a message's deliveries (one per recipient), and duplicates.
    fn record(&self, id: Option<u64>, rcpts: impl Iterator<Item = String>) {
        let at = unix_micros();
        let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        let Some(id) = id else { return };
        for r in rcpts {
            if t.seen.insert((id, r)) {
                t.deliveries += 1;
            } else {
                t.duplicates += 1;
            }
        }
        t.times.push((id, at));
    }
}

/// The `X-Bench-Id` of a message's header (BDAT: the message as it came).
fn bench_id(message: &[u8]) -> Option<u64> {
    for line in message.split(|&b| b == b'\n') {
        if line == b"\r" || line.is_empty() {
            return None;
        }
        if line.len() > 11 && line[..11].eq_ignore_ascii_case(b"x-bench-id:") {
            return String::from_utf8_lossy(&line[11..]).trim().parse().ok();
        }
    }
    None
}

/// Reads a message up to its lone dot; returns its `X-Bench-Id`.
async fn read_message(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> anyhow::Result<Option<u64>> {
    let mut id = None;
    let mut in_headers = true;
    loop {
        line.clear();
        if read.read_until(b'\n', line).await? == 0 {
            bail!("connection closed in DATA");
        }
        if line.as_slice() == b".\r\n" || line.as_slice() == b".\n" {
            return Ok(id);
        }
        if in_headers {
            if line.as_slice() == b"\r\n" {
                in_headers = false;
            } else if line.len() > 11 && line[..11].eq_ignore_ascii_case(b"x-bench-id:") {
                id = String::from_utf8_lossy(&line[11..]).trim().parse().ok();
            }
        }
    }
}

struct Plan {
    messages: u64,
    domains: u64,
    domain: Option<String>,
    rcpts: (u64, u64),
    sizes: (usize, usize),
    rate: Option<f64>,
    first_id: u64,
    seed: u64,
}

impl Plan {
    /// Message `n`: its recipients and its text. Sizes are log-uniform between the
    /// bounds (with 2–100 KiB: half the messages under 14 KiB, a mean near 25 KiB).
    fn message(&self, n: u64) -> (Vec<String>, Vec<u8>) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let count = rng.random_range(self.rcpts.0..=self.rcpts.1.max(self.rcpts.0));
        let rcpts = (0..count)
            .map(|i| match &self.domain {
                Some(d) => format!("u{n}x{i}@{d}"),
                None => format!("u{n}x{i}@d{}.bench.test", rng.random_range(0..self.domains)),
            })
            .collect::<Vec<_>>();
        let (lo, hi) = (self.sizes.0 as f64, self.sizes.1 as f64);
        let size = (lo * (hi / lo).powf(rng.random::<f64>())) as usize;
        let id = self.first_id + n;
        let mut text = format!(
            "From: bench@sender.bench.test\r\nTo: {}\r\nSubject: bench {id}\r\nMessage-ID: <bench-{id}@sender.bench.test>\r\nX-Bench-Id: {id}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n",
            rcpts.join(", ")
        )
        .into_bytes();
        let filler = b"The quick brown fox jumps over the lazy dog; sphinx of black quartz, judge my vow.\r\n";
        while text.len() + filler.len() < size {
            text.extend_from_slice(filler);
        }
        text.extend_from_slice(b"end\r\n.\r\n");
        (rcpts, text)
    }
}

async fn source(
    target: SocketAddr,
    sessions: u64,
    plan: Plan,
    times: Option<PathBuf>,
) -> anyhow::Result<()> {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicU64::new(0));
    let expected = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let sent_times = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sessions.max(1) {
        let (plan, next, expected, refused, sent_times) = (
            plan.clone(),
            next.clone(),
            expected.clone(),
            refused.clone(),
            sent_times.clone(),
        );
        tasks.spawn(async move {
            let mut s = Session::open(target).await?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= plan.messages {
                    break;
                }
                if let Some(rate) = plan.rate {
                    let due = start + Duration::from_secs_f64(n as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let (rcpts, text) = plan.message(n);
                match s.send(&rcpts, &text).await? {
                    Some(at) => {
                        expected.fetch_add(rcpts.len() as u64, Ordering::Relaxed);
                        sent_times
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((plan.first_id + n, at));
                    }
                    None => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            s.quit().await;
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(path) = times {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (id, at) in sent_times.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            writeln!(f, "{id} {at}")?;
        }
        f.flush()?;
    }
    println!(
        "accepted {} messages in {secs:.2} s ({:.1} msg/s); refused {}; expected deliveries {}",
        plan.messages - refused.load(Ordering::Relaxed),
        plan.messages as f64 / secs,
        refused.load(Ordering::Relaxed),
        expected.load(Ordering::Relaxed)
    );
    Ok(())
}

struct Session {
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: tokio::net::tcp::OwnedWriteHalf,
    line: Vec<u8>,
}

impl Session {
    async fn open(target: SocketAddr) -> anyhow::Result<Session> {
        let stream = TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut s = Session {
            read: BufReader::new(read),
            write,
            line: Vec::new(),
        };
        s.reply().await?;
        s.write.write_all(b"EHLO source.bench.test\r\n").await?;
        s.reply().await?;
        Ok(s)
    }

    /// The code of the next (possibly multi-line) reply.
    async fn reply(&mut self) -> anyhow::Result<u16> {
        loop {
            self.line.clear();
            if self.read.read_until(b'\n', &mut self.line).await? == 0 {
                bail!("the relay closed the connection");
            }
            if self.line.len() < 4 {
                bail!("bad reply {:?}", String::from_utf8_lossy(&self.line));
            }
            if self.line[3] != b'-' {
                let code = std::str::from_utf8(&self.line[..3])?.parse()?;
                return Ok(code);
            }
        }
    }

    /// One transaction, envelope and DATA pipelined; the end-of-DATA time (µs) when
    /// the message was accepted.
    async fn send(&mut self, rcpts: &[String], text: &[u8]) -> anyhow::Result<Option<u64>> {
        let mut cmd = String::from("MAIL FROM:<bench@sender.bench.test>\r\n");
        for r in rcpts {
            cmd.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        cmd.push_str("DATA\r\n");
        self.write.write_all(cmd.as_bytes()).await?;
        let mut ok = self.reply().await? == 250;
        let mut any_rcpt = false;
        for _ in rcpts {
            any_rcpt |= self.reply().await? == 250;
        }
        let data = self.reply().await?;
        if data != 354 {
            return Ok(None);
        }
        ok &= any_rcpt;
        // The text ends with its lone dot.
        self.write.write_all(text).await?;
        let eod = unix_micros();
        let done = self.reply().await?;
        Ok((ok && done == 250).then_some(eod))
    }

    async fn quit(&mut self) {
        let _ = self.write.write_all(b"QUIT\r\n").await;
        let mut rest = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.read.read_to_end(&mut rest)).await;
    }
}

fn read_times(path: &Path) -> anyhow::Result<HashMap<u64, u64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect())
}

fn latency(sent: &Path, delivered: &Path) -> anyhow::Result<()> {
    let sent = read_times(sent)?;
    let delivered = read_times(delivered)?;
    let mut lat: Vec<u64> = sent
        .iter()
        .filter_map(|(id, s)| Some(delivered.get(id)?.saturating_sub(*s)))
        .collect();
    if lat.is_empty() {
        bail!("no message is in both files");
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "delivered {} of {}: end of DATA -> delivered p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        sent.len(),
        pct(0.5),
        pct(0.99),
        *lat.last().unwrap_or(&0) as f64 / 1000.0
    );
    Ok(())
}

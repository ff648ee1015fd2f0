//! Connection reuse, after Postfix's connection cache: a session whose transaction ended
//! cleanly waits here, after EHLO (and STARTTLS), for the next message to the same MX
//! address from the same egress IP, instead of QUIT. A burst to one destination then
//! costs one MAIL/RCPT/DATA exchange per message rather than a TCP handshake, greeting,
//! EHLO, TLS handshake and QUIT as well: on loopback that was a third of the CPU time
//! spent per relayed message, and on the Internet it is several round trips.
//!
//! The egress IP is chosen first, by the pool and reputation, and only then is a session
//! looked up: reuse never changes which IP carries a message.
//!
//! As with Postfix (whose cached sessions sit in `scache`, outside the process limit),
//! `max_connections` bounds deliveries under way and idle sessions are held beside them,
//! at most `reuse_max_idle` (the one idle longest is closed to make room). Counting idle
//! sessions against `max_connections` looked stricter but defeated reuse under load:
//! with every slot busy, each new connection closed an idle session first, so on the
//! realistic benchmark (100 sites, two egress IPs) 1 delivery in 10 reused a session,
//! against 9 in 10 with the idle ones held beside the limit (default 1,000), at half the
//! CPU per message. Toward one destination address an idle session still counts as an open
//! connection: busy plus idle stay within the per-domain limit, so a receiver never
//! sees more connections from us than it was promised.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_send::SmtpClient;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A transport an SMTP session runs over: plain TCP or TLS on TCP.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub(super) type Client = SmtpClient<Box<dyn Io>>;

/// An SMTP session past EHLO, ready for MAIL.
pub(super) struct Session {
    pub(super) client: Client,
    /// The extensions the server announced (after STARTTLS, if used).
    pub(super) caps: u32,
    /// The TLS requirement it was opened under (`verify`, `sts:MX`, `dane:MX`): mail
    /// under a requirement only reuses a session opened under the same one.
    pub(super) tls_key: Option<String>,
    /// The site's `messages_per_connection`, when shaping sets one.
    pub(super) max_messages: Option<u32>,
    opened: Instant,
    /// Transactions completed on this session.
    messages: u32,
}

impl Session {
    pub(super) fn new(client: Client, caps: u32) -> Self {
        Self {
            client,
            caps,
            tls_key: None,
            max_messages: None,
            opened: Instant::now(),
            messages: 0,
        }
    }

    /// Ends the session the way Postfix does by default (`smtp_skip_quit_response`):
    /// QUIT is sent, the reply is not waited for, since nothing depends on it.
    pub(super) async fn quit(mut self) {
        quit(&mut self.client.stream).await;
    }
}

/// QUIT without waiting for the reply, then close our side.
pub(super) async fn quit<S: AsyncWrite + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(QUIT_WRITE_TIMEOUT, async {
        stream.write_all(b"QUIT\r\n").await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

/// How long a strict close waits for the server to hang up.
const STRICT_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long a QUIT may take to write before the connection is just closed.
const QUIT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// From `[delivery]`: how long and how much a session may be reused.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReuseLimits {
    /// An idle session is closed after this long; zero turns reuse off.
    pub(super) idle: Duration,
    /// No session is reused once this old.
    pub(super) lifetime: Duration,
    /// Transactions per session.
    pub(super) messages: u32,
    /// Idle sessions kept at most, over all destinations.
    pub(super) max_idle: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    egress: Option<IpAddr>,
    dest: SocketAddr,
}

struct Idle {
    session: Session,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    idle: HashMap<Key, Vec<Idle>>,
    /// Sessions in `idle`, kept as a count: every `put` checks it against
    /// `reuse_max_idle`, and summing up to a thousand lists per delivery would not do.
    idle_total: usize,
    /// Deliveries under way per destination address.
    busy: HashMap<SocketAddr, usize>,
}

impl State {
    fn idle_to(&self, dest: SocketAddr) -> usize {
        self.idle
            .iter()
            .filter(|(k, _)| k.dest == dest)
            .map(|(_, v)| v.len())
            .sum()
    }

    /// Removes the session idle longest among those `to` accepts.
    fn pop_oldest(&mut self, to: impl Fn(&Key) -> bool) -> Option<Session> {
        let key = self
            .idle
            .iter()
            .filter(|(k, _)| to(k))
            .filter_map(|(k, v)| v.first().map(|i| (*k, i.since)))
            .min_by_key(|(_, since)| *since)
            .map(|(k, _)| k)?;
        let list = self.idle.get_mut(&key)?;
        let idle = list.remove(0);
        if list.is_empty() {
            self.idle.remove(&key);
        }
        self.idle_total -= 1;
        Some(idle.session)
    }
}

/// The idle sessions, shared by every delivery.
pub(super) struct SessionCache {
    state: Mutex<State>,
    limits: ReuseLimits,
    reaper: AtomicBool,
}

/// A delivery to `dest` under way; counted until dropped.
pub(super) struct Busy<'a> {
    cache: &'a SessionCache,
    dest: SocketAddr,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut st = self.cache.lock();
        if let Some(n) = st.busy.get_mut(&self.dest) {
            *n -= 1;
            if *n == 0 {
                st.busy.remove(&self.dest);
            }
        }
    }
}

impl SessionCache {
    pub(super) fn new(limits: ReuseLimits) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            limits,
            reaper: AtomicBool::new(false),
        })
    }

    fn enabled(&self) -> bool {
        !self.limits.idle.is_zero()
    }

    fn fresh(&self, idle: &Idle, now: Instant) -> bool {
        now.duration_since(idle.since) < self.limits.idle
            && now.duration_since(idle.session.opened) < self.limits.lifetime
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a delivery to `dest` as under way until the guard is dropped.
    pub(super) fn busy(&self, dest: SocketAddr) -> Busy<'_> {
        let mut st = self.lock();
        *st.busy.entry(dest).or_default() += 1;
        Busy { cache: self, dest }
    }

    /// The most recently used idle session from `egress` to `dest`, if any is still
    /// within its limits.
    pub(super) fn take(&self, egress: Option<IpAddr>, dest: SocketAddr) -> Option<Session> {
        if !self.enabled() {
            return None;
        }
        let now = Instant::now();
        let mut stale = Vec::new();
        let found = {
            let mut st = self.lock();
            let st = &mut *st;
            let map = &mut st.idle;
            let key = Key { egress, dest };
            let list = map.get_mut(&key)?;
            let mut found = None;
            while let Some(idle) = list.pop() {
                st.idle_total -= 1;
                if self.fresh(&idle, now) {
                    found = Some(idle.session);
                    break;
                }
                stale.push(idle.session);
            }
            if list.is_empty() {
                map.remove(&key);
            }
            found
        };
        quit_all(stale);
        found
    }

    /// Makes room for a new connection to `dest`, which may have `cap` connections open
    /// (this one included): closes the sessions to `dest` idle longest (from other egress
    /// IPs: one from this IP would have been taken) until busy plus idle fit. Call with a
    /// [`Busy`] guard for this delivery held.
    pub(super) fn make_room(&self, dest: SocketAddr, cap: usize) {
        quit_all(self.victims(dest, cap));
    }

    /// [`SessionCache::make_room`] for a site that counts its connections strictly
    /// (`[[shaping]] max_connections`): returns once the server has closed each session
    /// ended here (or a short while has passed), so the new connection never overlaps.
    pub(super) async fn make_room_strictly(&self, dest: SocketAddr, cap: usize) {
        for s in self.victims(dest, cap) {
            let mut stream = s.client.stream;
            let _ = tokio::time::timeout(STRICT_CLOSE_WAIT, async {
                use tokio::io::AsyncReadExt;
                stream.write_all(b"QUIT\r\n").await?;
                stream.flush().await?;
                // Until the server hangs up: then it no longer counts the connection.
                let mut sink = [0u8; 512];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
        }
    }

    /// The idle sessions to close so that a new connection to `dest` fits `cap`.
    fn victims(&self, dest: SocketAddr, cap: usize) -> Vec<Session> {
        let mut victims = Vec::new();
        {
            let mut st = self.lock();
            let busy_here = st.busy.get(&dest).copied().unwrap_or(0);
            while busy_here + st.idle_to(dest) > cap {
                match st.pop_oldest(|k| k.dest == dest) {
                    Some(s) => victims.push(s),
                    None => break,
                }
            }
        }
        victims
    }

    /// Returns a session whose transaction ended cleanly. It is kept for the next
    /// message unless it has reached its limits, in which case it is closed.
    pub(super) fn put(
        self: &Arc<Self>,
        egress: Option<IpAddr>,
        dest: SocketAddr,
        mut session: Session,
    ) {
        session.messages += 1;
        let now = Instant::now();
        if !self.enabled()
            || session.messages >= self.limits.messages
            || session.max_messages.is_some_and(|m| session.messages >= m)
            || now.duration_since(session.opened) >= self.limits.lifetime
        {
            quit_all(vec![session]);
            return;
        }
        self.start_reaper();
        let mut victims = Vec::new();
        {
            let mut st = self.lock();
            while st.idle_total >= self.limits.max_idle {
                match st.pop_oldest(|_| true) {
                    Some(s) => victims.push(s),
                    None => break,
                }
            }
            st.idle.entry(Key { egress, dest }).or_default().push(Idle {
                session,
                since: now,
            });
            st.idle_total += 1;
            debug_assert_eq!(st.idle_total, st.idle.values().map(Vec::len).sum::<usize>());
        }
        quit_all(victims);
    }

    /// Closes the sessions idle for longer than the limit, so that a destination is not
    /// held open (and its server does not time us out) between bursts.
    fn reap(&self) {
        let now = Instant::now();
        let mut stale = Vec::new();
        {
            let mut st = self.lock();
            let map = &mut st.idle;
            for list in map.values_mut() {
                let (keep, old): (Vec<Idle>, Vec<Idle>) =
                    list.drain(..).partition(|i| self.fresh(i, now));
                *list = keep;
                stale.extend(old.into_iter().map(|i| i.session));
            }
            map.retain(|_, list| !list.is_empty());
            st.idle_total -= stale.len();
        }
        quit_all(stale);
    }

    /// One task per cache, started with its first idle session; it ends when the
    /// cache is dropped.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = (self.limits.idle / 2).max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(cache) = weak.upgrade() else { break };
                cache.reap();
            }
        });
    }
}

/// QUITs sessions without making the caller wait.
fn quit_all(sessions: Vec<Session>) {
    for s in sessions {
        tokio::spawn(s.quit());
    }
}

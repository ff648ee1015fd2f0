//! The relay's log output. A busy relay logs three lines per message (accepted,
//! delivery, removed); written one `write(2)` each, they cost about as much as the
//! rest of the logging put together. Lines are formatted on the thread that logs them,
//! appended to one buffer in order, and a thread of its own writes the buffer to stderr
//! at most [`LINGER`] after its first line: one write for hundreds of lines under load.
//!
//! What that costs: a `kill -9` loses the lines of the last [`LINGER`]. Nothing else is
//! lost with them; the spool, not the log, is the record of what was accepted. A normal
//! stop (`SIGTERM`, Ctrl-C, an error) writes everything out before the process exits.
//! When stderr cannot keep up, loggers wait once [`MAX_PENDING`] bytes are waiting, as
//! they would on a blocking write: memory stays bounded.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait for others to share its write.
const LINGER: Duration = Duration::from_millis(20);
/// Written at once when this much is waiting.
const FLUSH_AT: usize = 64 * 1024;
/// Loggers wait for the writer beyond this.
const MAX_PENDING: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// The writer thread waits for a first line (and must be woken for it).
    idle: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer: a first line, a full buffer, or the end.
    wake: Condvar,
    /// Wakes loggers waiting for room.
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A logger that panicked mid-append left whole lines at worst; keep logging.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Owns the writer thread; dropping it writes out what is pending and waits for that.
pub struct BatchedStderr {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchedStderr {
    /// Starts the writer thread.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with(std::io::stderr())
    }

    fn start_with(mut out: impl Write + Send + 'static) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut batch = Vec::new();
                loop {
                    let closed = {
                        let mut p = theirs.lock();
                        while p.buf.is_empty() && !p.closed {
                            p.idle = true;
                            p = theirs.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                        }
                        p.idle = false;
                        let (mut p, _) = theirs
                            .wake
                            .wait_timeout_while(p, LINGER, |p| p.buf.len() < FLUSH_AT && !p.closed)
                            .unwrap_or_else(|e| e.into_inner());
                        std::mem::swap(&mut batch, &mut p.buf);
                        theirs.drained.notify_all();
                        p.closed
                    };
                    // Nowhere to report a failed write to stderr; the lines are dropped.
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                    batch.clear();
                    if closed {
                        return;
                    }
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The writer `tracing_subscriber::fmt().with_writer(..)` takes.
    pub fn make_writer(&self) -> LogWriter {
        LogWriter(self.shared.clone())
    }
}

impl Drop for BatchedStderr {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Appends whole formatted lines to the pending buffer.
#[derive(Clone)]
pub struct LogWriter(Arc<Shared>);

impl Write for &LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let shared = &self.0;
        let mut p = shared.lock();
        while p.buf.len() >= MAX_PENDING && !p.closed {
            shared.wake.notify_all();
            p = shared.drained.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.buf.extend_from_slice(line);
        if p.idle || p.buf.len() >= FLUSH_AT {
            p.idle = false;
            shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose contents the test reads, counting the writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut c = self.0.lock().unwrap();
            c.0.extend_from_slice(b);
            c.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_in_few_writes_and_all_by_drop() {
        let capture = Capture::default();
        let sink = BatchedStderr::start_with(capture.clone()).unwrap();
        let writer = sink.make_writer();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        (&w).write_all(format!("t{t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(sink);
        let (bytes, writes) = capture.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("t{t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..1000).collect::<Vec<_>>(),
                "thread {t} out of order"
            );
        }
        assert!(writes < 100, "{writes} writes for 4000 lines");
    }

    #[test]
    fn a_lone_line_is_written_without_more_lines_or_a_drop() {
        let capture = Capture::default();
        let sink = BatchedStderr::start_with(capture.clone()).unwrap();
        (&sink.make_writer()).write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while capture.0.lock().unwrap().0.is_empty() {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(capture.0.lock().unwrap().0, b"alone\n");
        drop(sink);
    }

    #[test]
    fn a_stuck_output_holds_loggers_back_instead_of_growing() {
        /// Blocks every write until the test opens the gate.
        #[derive(Clone)]
        struct Gate(Arc<(Mutex<bool>, Condvar)>, Capture);
        impl Write for Gate {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let (open, cv) = &*self.0;
                let mut o = open.lock().unwrap();
                while !*o {
                    o = cv.wait(o).unwrap();
                }
                self.1.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Gate(Arc::default(), Capture::default());
        let sink = BatchedStderr::start_with(gate.clone()).unwrap();
        let writer = sink.make_writer();
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<_>>();
        let logger = {
            let w = writer.clone();
            let line = line.clone();
            std::thread::spawn(move || {
                for _ in 0..(3 * MAX_PENDING / 1024) {
                    (&w).write_all(&line).unwrap();
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !logger.is_finished(),
            "the logger ran ahead of a stuck output"
        );
        assert!(writer.0.lock().buf.len() <= MAX_PENDING + line.len());
        *gate.0.0.lock().unwrap() = true;
        gate.0.1.notify_all();
        logger.join().unwrap();
        drop(sink);
        assert_eq!(gate.1.0.lock().unwrap().0.len(), 3 * MAX_PENDING);
    }
}

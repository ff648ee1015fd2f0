//! The IMAP polling loop of the probe and complaint runners: every pass opens the
//! mailbox (re-reading its password file), lets the runner read it, tracks consecutive
//! failures (logged when they start and when the mailbox answers again), lets the runner
//! do its own work, and sleeps until the next pass. What is read and what is done with it
//! is the runner's ([`Reader`]).

use std::future::Future;
use std::time::Duration;

use super::mailbox::{Mailbox, MailboxError};

/// What one runner asks of the mailbox on each pass.
pub trait Reader: Send + Sync {
    /// What a successful read gives.
    type Read: Send;

    /// The mailbox, opened anew each pass (a rotated password is picked up).
    ///
    /// # Errors
    /// The password or CA file cannot be read.
    fn open(&self) -> Result<Mailbox, MailboxError>;

    /// Reads the mailbox: `None` when there is nothing to ask this pass.
    fn read(
        &self,
        mailbox: &Mailbox,
    ) -> impl Future<Output = Option<Result<Self::Read, MailboxError>>> + Send;

    /// Acts on what was read.
    fn handle(&self, read: Self::Read) -> impl Future<Output = ()> + Send;

    /// Work done on every pass after the mailbox, read or not.
    fn after_pass(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The wait between passes.
    fn interval(&self) -> Duration;
}

/// How the loop names its runner in the log.
#[derive(Debug, Clone, Copy)]
pub struct Labels {
    /// `seed probes`: the start of each line.
    pub name: &'static str,
    /// Logged (with the error) when the mailbox cannot be opened.
    pub cannot_open: &'static str,
    /// Said after "cannot read the mailbox" on the first failure (`; probes in flight wait`).
    pub while_failing: &'static str,
}

/// Consecutive failures to read the mailbox: the first is logged as a warning, the
/// recovery once, the ones between not at all.
#[derive(Debug, Default)]
pub struct Failures {
    count: u32,
}

impl Failures {
    /// Notes a read's outcome and logs a change; the read's value when it worked.
    pub fn track<T>(&mut self, labels: &Labels, result: Result<T, MailboxError>) -> Option<T> {
        match result {
            Ok(v) => {
                if self.count > 0 {
                    tracing::info!(
                        failures = self.count,
                        "{}: the mailbox answers again",
                        labels.name
                    );
                }
                self.count = 0;
                Some(v)
            }
            Err(e) => {
                if self.count == 0 {
                    tracing::warn!(error = %e, "{}: cannot read the mailbox{}", labels.name, labels.while_failing);
                }
                self.count = self.count.saturating_add(1);
                None
            }
        }
    }

    /// How many reads in a row have failed.
    pub fn count(&self) -> u32 {
        self.count
    }
}

/// Runs `reader` forever: one pass, then its interval's sleep.
pub async fn run<R: Reader>(reader: R, labels: Labels) {
    let mut failures = Failures::default();
    loop {
        pass(&reader, &labels, &mut failures).await;
        tokio::time::sleep(reader.interval()).await;
    }
}

/// One pass: open, read, handle, then the runner's own work.
async fn pass<R: Reader>(reader: &R, labels: &Labels, failures: &mut Failures) {
    match reader.open() {
        Ok(mailbox) => {
            if let Some(result) = reader.read(&mailbox).await
                && let Some(read) = failures.track(labels, result)
            {
                reader.handle(read).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "{}: {}", labels.name, labels.cannot_open),
    }
    reader.after_pass().await;
    tracing::debug!("{}: pass done", labels.name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_in_a_row_and_reset_when_the_mailbox_answers() {
        let labels = Labels {
            name: "test",
            cannot_open: "cannot open",
            while_failing: "",
        };
        let mut f = Failures::default();
        let err = || Err::<u8, _>(MailboxError::Timeout(Duration::from_secs(1)));
        assert_eq!(f.track(&labels, err()), None);
        assert_eq!(f.track(&labels, err()), None);
        assert_eq!(f.count(), 2);
        assert_eq!(f.track(&labels, Ok(7)), Some(7));
        assert_eq!(f.count(), 0);
    }
}

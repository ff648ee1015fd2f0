//! What the relay does about the content at the end of DATA, before it is spooled: the
//! bulk-mail check (`[compliance] one_click`) and DKIM signing (`[dkim]`). Both read the
//! header block parsed once by [`Headers::parse`].
//!
//! A signing failure answers `451`, not an unsigned `250`: the client keeps the message
//! and retries (nothing is lost), the failure shows at once in its log and ours, and
//! mail its domain's DMARC policy expects signed never leaves unsigned (at `p=reject` a
//! receiver would refuse it, at `p=quarantine` file it as spam — a loss nobody sees).

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Reply, Session};
use crate::config::{OneClick, SignPolicy};
use crate::content::Headers;
use crate::envelope::Sender;
use crate::senders::SenderId;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Bulk mail without one-click unsubscribe: logged and counted per sender, and with
    /// `one_click = "refuse"` the `550` to answer (nothing is spooled then).
    pub(super) fn check_one_click(&self, headers: &Headers, sender: &Sender) -> Option<Reply> {
        let mode = self.config.compliance.one_click;
        if mode == OneClick::Off {
            return None;
        }
        let missing = headers.one_click_missing()?;
        let who = SenderId::of(self.user.as_ref().map(|u| u.name.as_str()), sender)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "null-sender".into());
        crate::metrics::metrics().bulk_without_one_click(&who);
        tracing::warn!(
            sender = %who,
            from = %sender,
            client = %self.peer.ip(),
            missing = missing.describe(),
            refused = mode == OneClick::Refuse,
            "bulk mail without one-click unsubscribe (RFC 8058)"
        );
        (mode == OneClick::Refuse).then(|| {
            Reply::new(
                550,
                "5.7.1",
                format!(
                    "Bulk mail needs one-click unsubscribe (RFC 8058): missing {}",
                    missing.describe()
                ),
            )
        })
    }

    /// The `DKIM-Signature:` fields for `body` (none when it is not to be signed), made
    /// off the session's task; `body` comes back with them. `Err`: the `451` to answer.
    pub(super) async fn sign(
        &self,
        headers: &Headers,
        body: Vec<u8>,
    ) -> (Vec<u8>, Result<Vec<String>, Reply>) {
        let signer = self.inbound.security().signer.clone();
        if signer.keys().is_empty() {
            return (body, Ok(Vec::new()));
        }
        let vouched = match self.config.dkim.sign {
            SignPolicy::Authenticated => self.user.is_some(),
            SignPolicy::All => true,
        };
        if !vouched {
            return (body, Ok(Vec::new()));
        }
        // A user limited to some sender domains gets only those signed: a key must not
        // vouch for a From: its owner never allowed this user.
        if let (Some(user), Some(domain)) = (&self.user, &headers.from_domain)
            && !user.may_send_from(domain)
        {
            tracing::warn!(user = %user.name, from_domain = %domain, "not signed: the From: domain is not one of the user's");
            return (body, Ok(Vec::new()));
        }
        let Some(plan) = signer.plan(headers) else {
            return (body, Ok(Vec::new()));
        };
        let keys = plan.key_names();
        let signed = tokio::task::spawn_blocking(move || {
            let result = plan.sign(&body);
            (body, result)
        })
        .await;
        let m = crate::metrics::metrics();
        let failed = |error: String| {
            m.dkim_failures.inc();
            tracing::error!(keys = ?keys, %error, "DKIM signing failed; message refused with 451");
            Err(Reply::new(
                451,
                "4.3.0",
                "Local error in processing (signing), try again later",
            ))
        };
        match signed {
            Ok((body, Ok(signatures))) => {
                m.dkim_signatures.inc_by(signatures.len() as u64);
                tracing::debug!(keys = ?keys, "DKIM signed");
                (body, Ok(signatures))
            }
            Ok((body, Err(e))) => (body, failed(e.to_string())),
            Err(e) => (Vec::new(), failed(e.to_string())),
        }
    }
}

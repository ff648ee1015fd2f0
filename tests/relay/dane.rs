//! DANE for SMTP (RFC 7672) end to end: a root zone the test signs with its own key
//! (`ldns-signzone`), served by `nsd`, the key as the relay's `[dns] trust_anchor`, and
//! a sink whose self-signed certificate only the TLSA record vouches for.

use tokio_rustls::TlsAcceptor;

use crate::support::client::ready;
use crate::support::nsd::{SignedZone, Zones};
use crate::support::relay::Relay;
use crate::{World, message};

/// A sink certificate no CA signed, for a name that is not the MX host's (DANE-EE
/// checks neither): the acceptor, and the SHA-256 of its public key for a `3 1 1`
/// record.
fn self_signed() -> (TlsAcceptor, String) {
    let (acceptor, spki) = crate::support::sink::self_signed("not-the-mx.invalid");
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    (acceptor, hex)
}

/// `sidestep tls DOMAIN --json`, parsed.
async fn tls_json(w: &World, domain: &str) -> serde_json::Value {
    serde_json::from_str(&w.setup.cli_async(&["tls", domain, "--json"]).await).unwrap()
}

/// The usual world with its records in a signed zone: dest.test's MX host carries the
/// `tlsa` record (none: no TLSA at all, proven absent by NSEC); `tampered`: its RRSIG
/// is corrupted.
async fn dane_world(tlsa: Option<String>, tampered: bool) -> (World, SignedZone) {
    let mut w = World::new().await;
    let mut signed = vec![
        "dest.test. MX 10 mx.dest.test.".to_string(),
        format!("mx.dest.test. A {}", w.dest.addr.ip()),
        "sender.test. MX 10 mx.sender.test.".into(),
        format!("mx.sender.test. A {}", w.sender.addr.ip()),
    ];
    if let Some(t) = tlsa {
        signed.push(format!("_25._tcp.mx.dest.test. TLSA {t}"));
    }
    let tampered = if tampered {
        vec![("_25._tcp.mx.dest.test".to_string(), "TLSA".to_string())]
    } else {
        Vec::new()
    };
    let zone = SignedZone::start(Zones {
        signed,
        tampered,
        unsigned: Vec::new(),
    })
    .await;
    w.setup.resolver = Some(zone.dns_section());
    w.setup.queue = crate::NO_RETRY_SOON.into();
    (w, zone)
}

/// Waits for the mail to be deferred with `reason`; nothing reached the sink.
async fn deferred_with(w: &World, relay: &Relay, reason: &str) {
    relay.log_with(reason).await;
    relay.log_with("deferred: next attempt at").await;
    assert!(w.dest.messages().is_empty(), "nothing reached the sink");
}

async fn send(relay: &Relay) {
    let mut c = ready(relay.addr).await;
    c.send_mail("a@sender.test", &["b@dest.test"], &message("dane", "x\r\n"))
        .await;
}

#[tokio::test]
async fn a_matching_tlsa_3_1_1_record_delivers_over_tls() {
    let (acceptor, spki) = self_signed();
    let (w, _zone) = dane_world(Some(format!("3 1 1 {spki}")), false).await;
    w.dest.behave(|b| b.tls = Some(acceptor));
    let relay = w.setup.start().await;
    send(&relay).await;
    let got = w.dest.wait_for(1).await;
    assert!(got[0].tls, "delivered over TLS");
    relay.log_with("every recipient is final").await;
    let tls = tls_json(&w, "dest.test").await;
    assert_eq!(tls["dane_available"], true, "{tls}");
    assert_eq!(tls["mx"][0]["dnssec"], "secure", "{tls}");
    assert_eq!(tls["mx"][0]["tlsa"][0], format!("3 1 1 {spki}"), "{tls}");
}

#[tokio::test]
async fn a_tlsa_record_for_another_key_defers_the_mail() {
    let (acceptor, _) = self_signed();
    let (_, other) = self_signed();
    let (w, _zone) = dane_world(Some(format!("3 1 1 {other}")), false).await;
    w.dest.behave(|b| b.tls = Some(acceptor));
    let relay = w.setup.start().await;
    send(&relay).await;
    deferred_with(
        &w,
        &relay,
        "DANE (the TLSA records of _25._tcp.mx.dest.test) requires a verified certificate",
    )
    .await;
}

#[tokio::test]
async fn a_secure_tlsa_record_makes_starttls_mandatory() {
    let (_, spki) = self_signed();
    let (w, _zone) = dane_world(Some(format!("3 1 1 {spki}")), false).await;
    let relay = w.setup.start().await;
    send(&relay).await;
    deferred_with(
        &w,
        &relay,
        "does not offer STARTTLS, which DANE (the TLSA records of _25._tcp.mx.dest.test) requires",
    )
    .await;
}

#[tokio::test]
async fn a_bogus_tlsa_signature_defers_and_is_never_read_as_no_tlsa() {
    let (acceptor, spki) = self_signed();
    let (w, _zone) = dane_world(Some(format!("3 1 1 {spki}")), true).await;
    w.dest.behave(|b| b.tls = Some(acceptor));
    let relay = w.setup.start().await;
    send(&relay).await;
    relay
        .log_with("DANE: the TLSA records of _25._tcp.mx.dest.test do not validate")
        .await;
    relay.log_with("deferred: next attempt at").await;
    assert!(
        w.dest.connections.lock().unwrap().is_empty(),
        "nothing connected to the sink"
    );
}

#[tokio::test]
async fn without_a_tlsa_record_delivery_is_opportunistic_as_before() {
    let (w, _zone) = dane_world(None, false).await;
    let relay = w.setup.start().await;
    send(&relay).await;
    let got = w.dest.wait_for(1).await;
    assert!(
        !got[0].tls,
        "the sink offers no STARTTLS: plain text, as before"
    );
    // The absence was proven (NSEC), not DANE switched off.
    let tls = tls_json(&w, "dest.test").await;
    assert_eq!(tls["dane_available"], true, "{tls}");
    assert_eq!(tls["mx"][0]["dnssec"], "secure MX, no TLSA", "{tls}");
}

/// A TLSA record in a zone delegated without a DS (provably unsigned) is not DANE: an
/// attacker could have written it. Delivery is opportunistic, certificate unchecked.
#[tokio::test]
async fn a_tlsa_record_in_an_unsigned_zone_is_ignored() {
    let (acceptor, _) = self_signed();
    let mut w = World::new().await;
    let zone = SignedZone::start(Zones {
        signed: vec![
            "sender.test. MX 10 mx.sender.test.".into(),
            format!("mx.sender.test. A {}", w.sender.addr.ip()),
        ],
        tampered: Vec::new(),
        unsigned: vec![(
            "insecure.test".into(),
            vec![
                "insecure.test. MX 10 mx.insecure.test.".into(),
                format!("mx.insecure.test. A {}", w.dest.addr.ip()),
                format!("_25._tcp.mx.insecure.test. TLSA 3 1 1 {}", "00".repeat(32)),
            ],
        )],
    })
    .await;
    w.setup.resolver = Some(zone.dns_section());
    w.setup.queue = crate::NO_RETRY_SOON.into();
    w.dest.behave(|b| b.tls = Some(acceptor));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail(
        "a@sender.test",
        &["b@insecure.test"],
        &message("insecure", "x\r\n"),
    )
    .await;
    let got = w.dest.wait_for(1).await;
    assert!(
        got[0].tls,
        "STARTTLS offered: used, the certificate unchecked"
    );
    let tls = tls_json(&w, "insecure.test").await;
    assert_eq!(tls["mx"][0]["dnssec"], "insecure", "{tls}");
}

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
    zone_world(|w| {
        let mut signed = vec![
            "dest.test. MX 10 mx.dest.test.".to_string(),
            format!("mx.dest.test. A {}", w.dest.addr.ip()),
        ];
        signed.extend(tlsa.map(|t| format!("_25._tcp.mx.dest.test. TLSA {t}")));
        Zones {
            signed,
            tampered: if tampered {
                vec![("_25._tcp.mx.dest.test".to_string(), "TLSA".to_string())]
            } else {
                Vec::new()
            },
            unsigned: Vec::new(),
        }
    })
    .await
}

/// The usual sinks with the `zones` made for them served by a signed zone (sender.test
/// added to its signed part), the relay resolving through it; no retry soon.
async fn zone_world(zones: impl FnOnce(&World) -> Zones) -> (World, SignedZone) {
    let mut w = World::new().await;
    let mut zones = zones(&w);
    zones.signed.extend([
        "sender.test. MX 10 mx.sender.test.".to_string(),
        format!("mx.sender.test. A {}", w.sender.addr.ip()),
    ]);
    let zone = SignedZone::start(zones).await;
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

/// The sink offers STARTTLS with a certificate nothing vouches for; a mail to `rcpt`
/// arrives over it all the same (no policy applies, the certificate is unchecked).
async fn delivered_over_unchecked_tls(w: &World, acceptor: TlsAcceptor, rcpt: &str) -> Relay {
    w.dest.behave(|b| b.tls = Some(acceptor));
    let relay = w.setup.start().await;
    let mut c = ready(relay.addr).await;
    c.send_mail("a@sender.test", &[rcpt], &message("no DANE", "x\r\n"))
        .await;
    let got = w.dest.wait_for(1).await;
    assert!(
        got[0].tls,
        "STARTTLS offered: used, the certificate unchecked"
    );
    assert_eq!(got[0].rcpts, vec![rcpt]);
    relay
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
    let (w, _zone) = zone_world(|w| Zones {
        signed: Vec::new(),
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
    let _relay = delivered_over_unchecked_tls(&w, acceptor, "b@insecure.test").await;
    let tls = tls_json(&w, "insecure.test").await;
    assert_eq!(tls["mx"][0]["dnssec"], "insecure", "{tls}");
}

/// RFC 7672 §2.2.1: DANE applies only to MX hosts named by a secure MX answer. A
/// domain in a zone delegated without a DS (its MX answer provably insecure) names the
/// same host as dest.test, whose TLSA record (secure, for another key) DANE would
/// enforce: for the insecure domain the record is not looked at, the mail goes
/// opportunistically; for dest.test it is, and the mail waits.
#[tokio::test]
async fn dane_applies_only_to_a_host_named_by_a_secure_mx_answer() {
    let (acceptor, _) = self_signed();
    let (_, other) = self_signed();
    let (w, _zone) = zone_world(|w| Zones {
        signed: vec![
            "dest.test. MX 10 mx.dest.test.".into(),
            format!("mx.dest.test. A {}", w.dest.addr.ip()),
            format!("_25._tcp.mx.dest.test. TLSA 3 1 1 {other}"),
        ],
        tampered: Vec::new(),
        unsigned: vec![(
            "insecure.test".into(),
            vec!["insecure.test. MX 10 mx.dest.test.".into()],
        )],
    })
    .await;
    let relay = delivered_over_unchecked_tls(&w, acceptor, "b@insecure.test").await;
    relay.log_with("every recipient is final").await;
    let tls = tls_json(&w, "insecure.test").await;
    assert_eq!(tls["mx"][0]["name"], "mx.dest.test", "{tls}");
    assert_eq!(tls["mx"][0]["dnssec"], "insecure", "{tls}");
    // The same host under a secure MX answer: its TLSA record applies.
    send(&relay).await;
    relay
        .log_with(
            "DANE (the TLSA records of _25._tcp.mx.dest.test) requires a verified certificate",
        )
        .await;
    relay.log_with("deferred: next attempt at").await;
    assert_eq!(w.dest.messages().len(), 1, "the dest.test mail waits");
}

/// RFC 7672 §2.2.2: TLSA records are used only for a host whose address records are
/// secure too. dest.test's MX answer is secure and names mx.dest.test, which has a
/// secure TLSA record (for another key), but its address comes through a CNAME into a
/// zone delegated without a DS: the address is insecure, so DANE does not apply and the
/// mail goes opportunistically.
#[tokio::test]
async fn dane_is_not_applied_to_a_host_whose_addresses_are_insecure() {
    let (acceptor, _) = self_signed();
    let (_, other) = self_signed();
    let (w, _zone) = zone_world(|w| Zones {
        signed: vec![
            "dest.test. MX 10 mx.dest.test.".into(),
            "mx.dest.test. CNAME mx.insecure.test.".into(),
            format!("_25._tcp.mx.dest.test. TLSA 3 1 1 {other}"),
        ],
        tampered: Vec::new(),
        unsigned: vec![(
            "insecure.test".into(),
            vec![format!("mx.insecure.test. A {}", w.dest.addr.ip())],
        )],
    })
    .await;
    let _relay = delivered_over_unchecked_tls(&w, acceptor, "b@dest.test").await;
    let tls = tls_json(&w, "dest.test").await;
    assert_eq!(tls["dane_available"], true, "{tls}");
    assert_eq!(
        tls["mx"][0]["dnssec"], "secure MX, insecure address records",
        "{tls}"
    );
}

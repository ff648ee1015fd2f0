//! An authoritative DNS server on 127.0.0.1 (UDP and TCP, same port) serving one root
//! zone the test fills with MX and A records, and can change while sidestep runs.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, MX, PTR, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    server: Option<Server<Catalog>>,
    /// Sockets that take queries and never answer, after [`TestDns::go_silent`].
    black_hole: Option<(tokio::net::UdpSocket, tokio::net::TcpListener)>,
}

const TTL: u32 = 1;

impl TestDns {
    pub async fn start() -> Self {
        let root = Name::root();
        let zone = Arc::new(InMemoryZoneHandler::empty(
            root.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        ));
        let soa = SOA::new(
            Name::from_str("ns.test.").unwrap(),
            Name::from_str("hostmaster.test.").unwrap(),
            1,
            60,
            60,
            60,
            TTL,
        );
        zone.upsert(Record::from_rdata(root.clone(), TTL, RData::SOA(soa)), 1)
            .await;
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&root), vec![zone.clone()]);
        let mut server = Server::new(catalog);
        // UDP first on port 0, then TCP on the same port (retry on the rare clash).
        let (udp, tcp) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 65535);
        Self {
            addr,
            zone,
            server: Some(server),
            black_hole: None,
        }
    }

    fn name(s: &str) -> Name {
        Name::from_str(&format!("{}.", s.trim_end_matches('.'))).unwrap()
    }

    pub async fn add_mx(&self, domain: &str, preference: u16, host: &str) {
        let rdata = RData::MX(MX::new(preference, Self::name(host)));
        self.zone
            .upsert(Record::from_rdata(Self::name(domain), TTL, rdata), 1)
            .await;
    }

    /// RFC 7505 null MX: `MX 0 .`
    pub async fn add_null_mx(&self, domain: &str) {
        let rdata = RData::MX(MX::new(0, Name::root()));
        self.zone
            .upsert(Record::from_rdata(Self::name(domain), TTL, rdata), 1)
            .await;
    }

    pub async fn add_a(&self, host: &str, ip: IpAddr) {
        let IpAddr::V4(v4) = ip else {
            panic!("tests use IPv4 loopback")
        };
        self.zone
            .upsert(
                Record::from_rdata(Self::name(host), TTL, RData::A(A(v4))),
                1,
            )
            .await;
    }

    /// A PTR record: `ip`'s reverse name points at `name`.
    pub async fn add_ptr(&self, ip: IpAddr, name: &str) {
        let rdata = RData::PTR(PTR(Self::name(name)));
        self.zone
            .upsert(Record::from_rdata(Name::from(ip), TTL, rdata), 1)
            .await;
    }

    /// Removes every record of `rtype` at `name`.
    pub async fn remove(&self, name: &str, rtype: RecordType) {
        let key = RrKey::new(LowerName::new(&Self::name(name)), rtype);
        self.zone.records_mut().await.remove(&key);
    }

    /// Stops answering: queries time out from now on, as when a list's servers are down.
    pub async fn go_silent(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.shutdown_token().cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), server.block_until_done()).await;
        }
        let udp = tokio::net::UdpSocket::bind(self.addr).await.unwrap();
        let tcp = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.black_hole = Some((udp, tcp));
    }

    /// A DNSBL listing: `ip` listed in `zone` with `code` and a TXT reason.
    pub async fn list(&self, zone: &str, ip: IpAddr, code: &str, reason: Option<&str>) {
        let name = sidestep::reputation::dnsbl::query_name(ip, zone);
        let IpAddr::V4(code) = code.parse().unwrap() else {
            panic!("codes are IPv4")
        };
        self.zone
            .upsert(
                Record::from_rdata(Self::name(&name), TTL, RData::A(A(code))),
                1,
            )
            .await;
        if let Some(reason) = reason {
            self.add_txt(&name, reason).await;
        }
    }

    /// Removes the listing of `ip` in `zone`.
    pub async fn delist(&self, zone: &str, ip: IpAddr) {
        let name = sidestep::reputation::dnsbl::query_name(ip, zone);
        self.remove(&name, RecordType::A).await;
        self.remove(&name, RecordType::TXT).await;
    }

    /// The RFC 5782 test points of a healthy list: 127.0.0.2 listed, 127.0.0.1 not.
    pub async fn healthy_list(&self, zone: &str) {
        self.list(
            zone,
            "127.0.0.2".parse().unwrap(),
            "127.0.0.2",
            Some("test point"),
        )
        .await;
    }

    /// A TXT record; text longer than a DNS string (255 bytes, an RSA DKIM key) goes in
    /// several strings of one record, which resolvers join back.
    pub async fn add_txt(&self, name: &str, text: &str) {
        self.add_txt_ttl(name, text, TTL).await;
    }

    /// A TXT record with a TTL of its own (SPF records that caches may keep).
    pub async fn add_txt_ttl(&self, name: &str, text: &str, ttl: u32) {
        let strings = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let rdata = RData::TXT(TXT::new(strings));
        self.zone
            .upsert(Record::from_rdata(Self::name(name), ttl, rdata), 1)
            .await;
    }

    /// An A record with a TTL of its own.
    pub async fn add_a_ttl(&self, host: &str, ip: IpAddr, ttl: u32) {
        let IpAddr::V4(v4) = ip else {
            panic!("tests use IPv4 loopback")
        };
        self.zone
            .upsert(
                Record::from_rdata(Self::name(host), ttl, RData::A(A(v4))),
                1,
            )
            .await;
    }
}

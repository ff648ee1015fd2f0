//! A real Redis for the cluster tests: Debian's redis-server on a loopback port, no
//! persistence, stopped on drop (and stoppable mid-test, to play an outage).

use std::net::SocketAddr;
use std::time::Duration;

pub struct Redis {
    pub addr: SocketAddr,
    child: Option<std::process::Child>,
    /// With TLS: the server's arguments for it, and the CA file clients trust.
    tls: Option<(Vec<String>, std::path::PathBuf)>,
    _dir: Option<tempfile::TempDir>,
}

impl Redis {
    pub async fn start() -> Redis {
        super::require("redis-server");
        Self::on_a_free_port(None, None).await
    }

    async fn on_a_free_port(
        tls: Option<(Vec<String>, std::path::PathBuf)>,
        dir: Option<tempfile::TempDir>,
    ) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            child: None,
            tls,
            _dir: dir,
        };
        r.restart().await;
        r
    }

    /// A Redis that speaks only TLS, with a certificate for 127.0.0.1 from a private CA.
    pub async fn start_tls() -> Redis {
        super::require("redis-server");
        let dir = tempfile::tempdir().unwrap();
        // A private CA and a certificate for 127.0.0.1 (an IP SAN), as an operator makes
        // them with openssl.
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sidestep test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=keyCertSign,cRLSign,digitalSignature",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let file = |name: &str| dir.path().join(name).display().to_string();
        let args = vec![
            "--tls-cert-file".to_string(),
            file("cert.pem"),
            "--tls-key-file".into(),
            file("key.pem"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let ca = dir.path().join("ca.pem");
        Self::on_a_free_port(Some((args, ca)), Some(dir)).await
    }

    /// The CA file a TLS Redis's clients trust.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.tls.as_ref().map(|t| t.1.clone()).unwrap()
    }

    /// `redis://127.0.0.1:port/0`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{}/0", self.addr)
    }

    /// Kills the server (its memory is gone: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again, empty) on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            Some((args, _)) => {
                cmd.args(["--port", "0", "--tls-port"])
                    .arg(self.addr.port().to_string())
                    .args(args);
            }
            None => {
                cmd.arg("--port").arg(self.addr.port().to_string());
            }
        }
        let child = cmd
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not listen on {}", self.addr);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

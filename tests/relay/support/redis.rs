//! A real Redis for the cluster tests: Debian's redis-server on a loopback port, no
//! persistence, stopped on drop (and stoppable mid-test, to play an outage).

use std::net::SocketAddr;
use std::time::Duration;

pub struct Redis {
    pub addr: SocketAddr,
    child: Option<std::process::Child>,
}

impl Redis {
    pub async fn start() -> Redis {
        super::require("redis-server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            child: None,
        };
        r.restart().await;
        r
    }

    /// `redis://127.0.0.1:port/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
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
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
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

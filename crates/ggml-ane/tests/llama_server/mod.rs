//! A `llama-server` of the pinned host, for the tests: started on a free 127.0.0.1 port with a
//! bounded wait for `/health`, its resident memory read from /proc, stopped with SIGINT (killed
//! past a bound) or killed when dropped. `http.rs` is the client side.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using a part"
)]

pub mod http;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to load the model and answer `/health`.
const START_BOUND: Duration = Duration::from_secs(60);
/// How long it may take to end after SIGINT.
const STOP_BOUND: Duration = Duration::from_secs(20);

pub struct LlamaServer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl LlamaServer {
    /// Starts `cmd` (llama-server with its model, options and environment) listening on a free
    /// port, its output in `<dir>/<name>.log`; returns once `/health` answers 200.
    pub fn start(mut cmd: Command, dir: &Path, name: &str) -> LlamaServer {
        // a free port: bound by the OS, released for the server
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start llama-server");
        let mut server = LlamaServer {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + START_BOUND;
        loop {
            let health = http::request(port, "GET", "/health", None, Duration::from_secs(5));
            if health.is_ok_and(|r| r.status == 200) {
                return server;
            }
            let exited = server.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{name} did not become healthy within {START_BOUND:?} ({exited:?}):\n{}",
                crate::support::tail(&server.log_text())
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's resident memory (`VmRSS` of /proc/PID/status) in KiB, while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Stops the server with SIGINT, as a person would; true when it ended by itself within
    /// the bound (it is killed otherwise).
    pub fn interrupt(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_BOUND;
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let ended = c.try_wait().ok().flatten().is_some();
        let _ = c.kill();
        let _ = c.wait();
        ended
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

//! Several Macs, tested on one (issue #14): two `ggml-rpc-server`s on 127.0.0.1 serve the
//! `ANE-FULL` device, libllama splits the tiny llama's layers between them (`--rpc`), and the
//! logits equal a CPU-only run; a server that is gone makes the client end, within a bound.
#![cfg(ggml_linked)]

mod support;

use support::{nmse, tail};

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to listen, and a client run to finish.
const START_BOUND: Duration = Duration::from_secs(30);
const RUN_BOUND: Duration = Duration::from_secs(180);

/// A running `ggml-rpc-server`, stopped (and its log read) when dropped or asked.
struct Server {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(bin: &Path, lib_dir: &Path, dir: &Path, name: &str) -> Server {
        // a free port: bound by the OS, released for the server
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin)
            .args(["-d", "ANE-FULL", "-H", "127.0.0.1", "-t", "1", "-p"])
            .arg(port.to_string())
            .current_dir(lib_dir)
            .env("LD_LIBRARY_PATH", lib_dir)
            .env("GGML_BACKEND_PATH", support::cdylib())
            .env("GGML_ANE_MIN_TOKENS", "1")
            .env("GGML_ANE_LOG", "debug")
            .env("GGML_ANE_STATS", "1")
            .env("GGML_ANE_CACHE_DIR", dir.join(format!("{name}-cache")))
            .env_remove("GGML_ANE_ENGINE")
            .env_remove("GGML_ANE_KERNELS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ggml-rpc-server");
        let server = Server {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + START_BOUND;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{name} did not listen within {START_BOUND:?}:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGINT, as a person would (killed if it outlives the bound).
    fn interrupt(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `cmd` to completion within `bound` (killed past it): (success, stdout+stderr).
fn run_bounded(mut cmd: Command, bound: Duration) -> (bool, String, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        s + &e
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the client did not end within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), reader.join().unwrap(), start.elapsed())
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

struct Setup {
    lib_dir: PathBuf,
    server: PathBuf,
    logits: PathBuf,
    model: PathBuf,
    dir: PathBuf,
}

fn setup(tag: &str) -> Option<Setup> {
    let lib_dir = support::lib_dir();
    let server = lib_dir.join("ggml-rpc-server");
    let llama = lib_dir.join(if cfg!(target_os = "macos") {
        "libllama.dylib"
    } else {
        "libllama.so"
    });
    if !server.exists() || !llama.exists() {
        assert!(
            std::env::var_os("GGML_ANE_REQUIRE_HOSTS").is_none(),
            "ggml-rpc-server or libllama missing in {}",
            lib_dir.display()
        );
        eprintln!("SKIP: ggml-rpc-server or libllama missing (scripts/build-ggml.sh builds them)");
        return None;
    }
    let dir = support::scratch_dir(tag);
    let model = support::tiny_llama(&dir, "f16");
    let logits = support::compile_logits(tag);
    Some(Setup {
        lib_dir,
        server,
        logits,
        model,
        dir,
    })
}

impl Setup {
    /// The logits program; `rpc`: the servers to split the layers across.
    fn client(&self, out: &Path, rpc: Option<&str>) -> Command {
        let mut cmd = Command::new(&self.logits);
        cmd.arg(&self.model)
            .arg("100")
            .arg(out)
            .current_dir(&self.lib_dir)
            .env("LD_LIBRARY_PATH", &self.lib_dir)
            // the client needs no ANE: the servers have it
            .env_remove("GGML_BACKEND_PATH");
        if let Some(servers) = rpc {
            cmd.env("RPC_SERVERS", servers)
                .env("LOGITS_DEVICES", "RPC0,RPC1");
        }
        cmd
    }
}

#[test]
fn two_rpc_servers_serving_ane_full_match_the_cpu() {
    let Some(s) = setup("rpc") else { return };
    let (ok, log, _) = run_bounded(s.client(&s.dir.join("cpu.f32"), None), RUN_BOUND);
    assert!(ok, "{}", tail(&log));
    let mut a = Server::start(&s.server, &s.lib_dir, &s.dir, "server-a");
    let mut b = Server::start(&s.server, &s.lib_dir, &s.dir, "server-b");
    let servers = format!("{},{}", a.endpoint(), b.endpoint());
    let (ok, log, took) = run_bounded(s.client(&s.dir.join("rpc.f32"), Some(&servers)), RUN_BOUND);
    // stopped as a person stops an rpc-server: each prints its stats table on SIGINT
    a.interrupt();
    b.interrupt();
    let (log_a, log_b) = (a.log_text(), b.log_text());
    assert!(
        ok,
        "client:\n{}\nserver a:\n{}\nserver b:\n{}",
        tail(&log),
        tail(&log_a),
        tail(&log_b)
    );
    let (cpu, rpc) = (
        read_f32(&s.dir.join("cpu.f32")),
        read_f32(&s.dir.join("rpc.f32")),
    );
    assert_eq!(cpu.len(), rpc.len());
    let err = nmse(&cpu, &rpc);
    // both servers computed engine work (GGML_ANE_LOG=debug: a line per MUL_MAT or block)
    let engine = |l: &str| {
        l.lines()
            .filter(|l| {
                (l.starts_with("ggml-ane: FUSED ") || l.starts_with("ggml-ane: MUL_MAT "))
                    && l.contains("-> engine")
            })
            .count()
    };
    let (ea, eb) = (engine(&log_a), engine(&log_b));
    for log in [&log_a, &log_b] {
        // buffer usage does not travel over RPC: the weights are known as leaves of the graph,
        // and the fused blocks bake them
        assert!(
            log.contains("-> engine (fused qkv)\n") || log.contains("-> engine (fused ffn)\n"),
            "{}",
            tail(log)
        );
        assert!(log.contains("ggml-ane: signal 2"), "{}", tail(log));
        assert!(support::stat(log, "nodes on engine") > 0, "{}", tail(log));
    }
    let _ = std::fs::remove_dir_all(&s.dir);
    eprintln!(
        "two rpc-servers (ANE-FULL): NMSE {err:.1e} vs the CPU, engine lines {ea} + {eb}, {took:?}"
    );
    assert!(
        ea > 0 && eb > 0,
        "engine work on both servers: {ea}, {eb}\n{}",
        tail(&log_a)
    );
    assert!(err <= 1e-5, "NMSE {err:e}");
}

#[test]
fn a_server_that_is_gone_ends_the_client_within_a_bound() {
    let Some(s) = setup("rpc-dead") else { return };
    // gone before the client starts: it cannot connect
    let a = Server::start(&s.server, &s.lib_dir, &s.dir, "server-a");
    let mut b = Server::start(&s.server, &s.lib_dir, &s.dir, "server-b");
    let servers = format!("{},{}", a.endpoint(), b.endpoint());
    b.stop();
    let (ok, log, took) = run_bounded(
        s.client(&s.dir.join("dead.f32"), Some(&servers)),
        Duration::from_secs(60),
    );
    assert!(
        !ok,
        "the client succeeded without server b:\n{}",
        tail(&log)
    );
    eprintln!("with one server gone the client ended in {took:?}");
    drop(a);

    // gone mid-run: stopped once it computed the prompt, before the decode step
    let a = Server::start(&s.server, &s.lib_dir, &s.dir, "server-c");
    let mut b = Server::start(&s.server, &s.lib_dir, &s.dir, "server-d");
    let servers = format!("{},{}", a.endpoint(), b.endpoint());
    let mut client = s.client(&s.dir.join("dying.f32"), Some(&servers));
    client.env("LOGITS_PAUSE_MS", "3000");
    let started = Instant::now();
    let mut child = client
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the client");
    let deadline = Instant::now() + RUN_BOUND;
    while !b.log_text().contains("ggml-ane: FUSED ") {
        assert!(
            Instant::now() < deadline,
            "server d computed nothing:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    b.stop();
    let bound = Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the client hung after its server died");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(a);
    let _ = std::fs::remove_dir_all(&s.dir);
    assert!(
        !status.success(),
        "the client succeeded after its server died"
    );
    eprintln!(
        "a server dying mid-run ended the client in {:?} ({status})",
        started.elapsed()
    );
}

//! A loopback S3-compatible server (s3s-fs over a temporary directory), run on a runtime of its
//! own inside the test process: it stops when the test's value is dropped or the process ends.

use std::path::PathBuf;
use std::process::Command;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

const KEY: &str = "saerl-test-key";
const SECRET: &str = "saerl-test-secret";

pub struct S3Server {
    pub endpoint: String,
    pub root: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

impl S3Server {
    /// A server on 127.0.0.1 (a free port) with the given buckets.
    pub fn start(buckets: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        for b in buckets {
            std::fs::create_dir_all(root.path().join(b)).unwrap();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(KEY, SECRET));
        let service = b.build();
        rt.spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                // Headers and body go out in two writes; with Nagle on, each response waits
                // for the client's delayed ACK (40 ms), as no real S3 endpoint does.
                let _ = socket.set_nodelay(true);
                let service = service.clone();
                tokio::spawn(async move {
                    let conn = ConnBuilder::new(TokioExecutor::new());
                    let _ = conn.serve_connection(TokioIo::new(socket), service).await;
                });
            }
        });
        Self {
            endpoint,
            root,
            _rt: rt,
        }
    }

    /// The environment a saerl process needs for this server, with a lake cache in `cache`.
    pub fn env(&self, cache: PathBuf) -> S3Env {
        S3Env {
            vars: vec![
                ("AWS_ACCESS_KEY_ID", KEY.into()),
                ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_ENDPOINT_URL", self.endpoint.clone()),
                ("AWS_ALLOW_HTTP", "true".into()),
                ("SAERL_LAKE_CACHE", cache.display().to_string()),
            ],
        }
    }
}

#[derive(Clone)]
pub struct S3Env {
    pub vars: Vec<(&'static str, String)>,
}

impl S3Env {
    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
    }

    /// The same server with another cache directory (another machine).
    pub fn with_cache(&self, cache: PathBuf) -> S3Env {
        let mut e = self.clone();
        for (k, v) in &mut e.vars {
            if *k == "SAERL_LAKE_CACHE" {
                *v = cache.display().to_string();
            }
        }
        e
    }
}

/// A server for trying saerl by hand: `cargo test --test cluster -- --ignored --nocapture serve`
/// prints the variables to export, and stops after `SAERL_S3_SERVE_SECS` (default 300) seconds.
#[test]
#[ignore]
fn serve() {
    let server = S3Server::start(&["study"]);
    for (k, v) in server.env(server.root.path().join("cache")).vars {
        println!("export {k}={v}");
    }
    let secs = std::env::var("SAERL_S3_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    std::thread::sleep(std::time::Duration::from_secs(secs));
}

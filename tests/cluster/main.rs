//! Beyond one machine: the lake on an S3-compatible object store (a loopback server started by
//! the test, `s3.rs`) and the saved queries on a Ballista cluster of one scheduler and two
//! executors started by the test (`cluster.rs`).

mod cluster;
mod lake_on_s3;
mod s3;
#[path = "../common/mod.rs"]
mod shared;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use shared::fixtures;

/// A saerl command against `lake` (a directory or an `s3://` URL), with the server's
/// credentials and a cache of its own.
pub fn saerl(env: &s3::S3Env, lake: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_saerl"));
    cmd.arg("--lake")
        .arg(lake)
        .args(args)
        .env_remove("SAERL_KILL_AT");
    env.apply(&mut cmd);
    cmd
}

pub fn output(mut cmd: Command) -> Output {
    cmd.output().expect("running saerl")
}

/// Runs and requires success; returns stdout.
pub fn ok(cmd: Command) -> String {
    let what = format!("{cmd:?}");
    let o = output(cmd);
    assert!(
        o.status.success(),
        "{what}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn sae_pt() -> PathBuf {
    fixtures().join("sae-pt")
}

/// Every saved query of the repository: (name, path).
pub fn saved_queries() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no saved queries in {}", dir.display());
    out
}

/// A query's answer as CSV.
pub fn query(env: &s3::S3Env, lake: &str, extra: &[&str], file: &Path) -> String {
    let mut args = vec!["sql", "--format", "csv", "-f", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(saerl(env, lake, &args))
}

//! Every saved query gives the same rows on a local lake, on the same lake in the object store,
//! and on a Ballista cluster (one scheduler, two executors) reading the object store.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::s3::{S3Env, S3Server};
use crate::shared::flight::{client, ipc_csv, same_csv, FlightServer};
use crate::{ok, output, query, sae_pt, saerl, saved_queries};

/// The cluster's processes: killed when dropped, when the test process dies (parent-death
/// signal), and in any case after `--stop-after` seconds.
pub struct Cluster {
    pub url: String,
    children: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port `p` on 127.0.0.1 with `p + 1` free too (an executor takes both).
fn free_ports() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

impl Cluster {
    pub fn start(env: &S3Env, lake: &str, work: &std::path::Path) -> Self {
        let sched = free_ports();
        let mut cluster = Cluster {
            url: format!("df://127.0.0.1:{sched}"),
            children: Vec::new(),
        };
        let spawn = |name: &str, args: Vec<String>| -> Child {
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            args.extend(["--stop-after", "900"]);
            let mut cmd = saerl(
                &env.with_cache(work.join(format!("cache-{name}"))),
                lake,
                &args,
            );
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            // SAFETY: the hook only calls prctl, which is async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            cmd.spawn().expect("starting a cluster process")
        };
        cluster.children.push(spawn(
            "scheduler",
            vec![
                "cluster".into(),
                "scheduler".into(),
                "--bind".into(),
                format!("127.0.0.1:{sched}"),
            ],
        ));
        for i in 0..2 {
            let port = free_ports();
            cluster.children.push(spawn(
                &format!("executor{i}"),
                vec![
                    "cluster".into(),
                    "executor".into(),
                    "--scheduler".into(),
                    format!("127.0.0.1:{sched}"),
                    "--bind".into(),
                    format!("127.0.0.1:{port}"),
                    "--work-dir".into(),
                    work.join(format!("shuffle{i}")).display().to_string(),
                    "--concurrency".into(),
                    "2".into(),
                ],
            ));
        }
        // Ready once a statement runs through it.
        let start = Instant::now();
        loop {
            let o = output(saerl(
                env,
                lake,
                &["sql", "--cluster", &cluster.url, "-c", "SELECT 1"],
            ));
            if o.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the cluster did not come up:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        cluster
    }
}

/// The same rows in the same order (floats up to summation order), or a panic showing the first
/// line that differs.
fn same(want: &str, got: &str, what: &str) {
    let Some(i) = saerl::sql::first_csv_difference(want, got) else {
        return;
    };
    let (w, g): (Vec<_>, Vec<_>) = (want.lines().collect(), got.lines().collect());
    panic!(
        "{what}: {} rows vs {} locally; first difference at line {i}:\n  local: {:?}\n  here:  {:?}",
        g.len(),
        w.len(),
        w.get(i),
        g.get(i)
    );
}

#[test]
fn saved_queries_give_the_same_rows_locally_on_the_object_store_and_on_a_cluster() {
    let server = S3Server::start(&["study"]);
    let work = tempfile::tempdir().unwrap();
    let env = server.env(work.path().join("cache"));
    let local = work.path().join("lake").display().to_string();
    let s3 = "s3://study/lake";
    let fx = sae_pt();
    for lake in [local.as_str(), s3] {
        ok(saerl(&env, lake, &["import", "pt", fx.to_str().unwrap()]));
    }
    let cluster = Cluster::start(&env, s3, work.path());
    let mut nonempty = 0;
    let mut wanted = Vec::new();
    for (name, file) in saved_queries() {
        let want = query(&env, &local, &[], &file);
        nonempty += usize::from(want.lines().count() > 1);
        let on_s3 = query(&env, s3, &[], &file);
        same(&want, &on_s3, &format!("{name} on the object store"));
        let on_cluster = query(&env, s3, &["--cluster", &cluster.url], &file);
        same(&want, &on_cluster, &format!("{name} on the cluster"));
        wanted.push((name, std::fs::read_to_string(&file).unwrap(), want));
    }
    assert!(nonempty > 0, "every saved query came back empty");
    // The same through Flight SQL (ADBC from Python), served from the object store and from
    // the cluster.
    let jobs: Vec<serde_json::Value> = wanted
        .iter()
        .map(|(name, sql, _)| serde_json::json!({ "name": name, "sql": sql }))
        .collect();
    for (what, extra) in [
        ("object store", vec![]),
        ("cluster", vec!["--cluster", cluster.url.as_str()]),
    ] {
        let mut args = vec!["serve"];
        args.extend(extra);
        let server = FlightServer::start(saerl(&env, s3, &args), work.path());
        let out = work.path().join(format!("flight {what}"));
        let job = serde_json::json!({ "mode": "queries", "queries": jobs });
        client(&server.uri(), None, &job, &out);
        for (name, _, want) in &wanted {
            let got = ipc_csv(&out.join(format!("{name}.arrow")));
            same_csv(
                want,
                &got,
                &format!("{name} through Flight SQL on the {what}"),
            );
        }
    }
    // A client of another lake (the same tables elsewhere) is refused, naming both lakes, not
    // answered from the cluster's lake or with nothing.
    let drift = saved_queries()
        .into_iter()
        .find(|(n, _)| n == "decoder_drift")
        .expect("queries/decoder_drift.sql");
    let o = output(saerl(
        &env,
        &local,
        &[
            "sql",
            "--cluster",
            &cluster.url,
            "-f",
            drift.1.to_str().unwrap(),
        ],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a statement for another lake ran on the cluster"
    );
    assert!(
        err.contains(s3) && err.contains(&local),
        "the error names both lakes: {err}"
    );
    // The report runs on the cluster too.
    let out = work.path().join("report");
    ok(saerl(
        &env,
        s3,
        &["report", out.to_str().unwrap(), "--cluster", &cluster.url],
    ));
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    if let Some(at) = page.find("The query failed") {
        let end = page[at..]
            .char_indices()
            .nth(400)
            .map_or(page.len(), |(i, _)| at + i);
        panic!("a query failed on the cluster: {}", &page[at..end]);
    }
    drop(cluster);
}

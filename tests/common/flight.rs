//! A `saerl serve --flight` process for the tests, and the Python Flight SQL client that talks
//! to it (`tests/python/flight_client.py`: ADBC, pyarrow, pandas, Polars).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process on a loopback port, killed when dropped; its stderr goes to `log`.
pub struct FlightServer {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Drop for FlightServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FlightServer {
    /// `saerl ... serve` (the caller gives the lake and any flags) with Flight SQL alone on a
    /// free loopback port; waits until it listens.
    pub fn start(mut cmd: Command, dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.join(format!("flight-{port}.log"));
        cmd.args(["--no-web", "--flight", &addr, "--stop-after", "900"])
            .env_remove("SAERL_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // Gone with the test process, however it ends.
        // SAFETY: the hook only calls prctl, which is async-signal-safe, between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let mut server = Self { child, addr, log };
        let t = Instant::now();
        while std::net::TcpStream::connect(&server.addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "the Flight SQL server exited ({status}):\n{}",
                    server.stderr()
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the Flight SQL server did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn uri(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs the Python client with `job` against `uri` (`token` or none); its JSON summary.
/// Results land in `out` as Arrow IPC files.
pub fn client(
    uri: &str,
    token: Option<&str>,
    job: &serde_json::Value,
    out: &Path,
) -> serde_json::Value {
    std::fs::create_dir_all(out).unwrap();
    let job_file = out.join(format!("job-{}.json", job["mode"].as_str().unwrap()));
    std::fs::write(&job_file, job.to_string()).unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        uri.into(),
        token.unwrap_or("-").into(),
        job_file.into(),
        out.into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    super::python_json("flight_client.py", &args)
}

/// An Arrow IPC file as `saerl sql --format csv` prints its rows.
pub fn ipc_csv(path: &Path) -> String {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = arrow::ipc::reader::FileReader::try_new(file, None).unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let mut out = Vec::new();
    saerl::sql::print_batches(&batches, saerl::sql::Format::Csv, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// The same rows (floats within a relative tolerance), or a panic showing the first line that
/// differs.
pub fn same_csv(want: &str, got: &str, what: &str) {
    if let Some(i) = saerl::sql::first_csv_difference(want, got) {
        let (w, g): (Vec<_>, Vec<_>) = (want.lines().collect(), got.lines().collect());
        panic!(
            "{what}: {} lines against {} from saerl sql; first difference at line {i}:\n  saerl sql: {:?}\n  flight:    {:?}",
            g.len(),
            w.len(),
            w.get(i),
            g.get(i)
        );
    }
}

/// A value as the Python client binds it: an integer, a float, else text (as `--param` does).
pub fn param(v: &str) -> serde_json::Value {
    if let Ok(i) = v.parse::<i64>() {
        i.into()
    } else if let Ok(f) = v.parse::<f64>() {
        f.into()
    } else {
        v.into()
    }
}

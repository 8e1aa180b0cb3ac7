//! `saerl serve` over HTTP: the JSON twins against values computed another way (SQL over the
//! same lake, the stored top activations), 404s naming what exists, the token rule, the SQL
//! box's limits and read-only rule, escaping, and a lake left as it was.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// A server process, killed when dropped (and by the OS when the test dies).
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(lake: &Path, extra: &[&str]) -> Server {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_saerl"))
        .arg("--lake")
        .arg(lake)
        .args(["serve", "--bind", &addr])
        .args(extra)
        .env_remove("SAERL_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, addr };
    let t = Instant::now();
    while TcpStream::connect(&server.addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the server did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn request(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

fn get(addr: &str, path: &str) -> Reply {
    request(addr, "GET", path, &[], "")
}

fn enc(q: &str) -> String {
    url::form_urlencoded::byte_serialize(q.as_bytes()).collect()
}

fn csv_rows(lake: &Path, sql: &str) -> Vec<Vec<String>> {
    ok(lake, &["sql", "--format", "csv", "-c", sql])
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn the_json_twins_match_the_lake_and_the_pages_render() {
    let lake = fixture_lake();
    let before = snapshot(lake);
    let server = start(lake, &[]);
    let a = &server.addr;
    // The study: every chain × layer × k of the lake.
    let study = get(a, "/api/").json();
    let groups = study["groups"].as_array().unwrap();
    let want = csv_rows(
        lake,
        "SELECT DISTINCT chain, layer, k FROM saes ORDER BY chain, layer, k",
    );
    assert_eq!(groups.len(), want.len());
    let page = get(a, "/");
    assert_eq!(page.status, 200);
    assert!(
        want.iter().all(|w| page.body.contains(&w[0])),
        "every chain on the study page"
    );

    // The tiny SAE (with statistics and activations): density as feature_stats has it, and each
    // top example's peak activation recomputed from the stored activations equals the stored
    // top value.
    let tiny = csv_rows(lake, "SELECT layer, k FROM saes WHERE chain = 'tiny'");
    let (layer, k) = (&tiny[0][0], &tiny[0][1]);
    let dense = csv_rows(
        lake,
        &format!("SELECT feature, density FROM feature_stats WHERE chain = 'tiny' AND split = 'val' AND layer = {layer} AND k = {k} ORDER BY density DESC, feature LIMIT 1"),
    );
    let (feature, density) = (&dense[0][0], dense[0][1].parse::<f64>().unwrap());
    let path = format!("/chain/tiny/layer/{layer}/k/{k}/feature/{feature}");
    let f = get(a, &format!("/api{path}")).json();
    let st = &f["stages"][0];
    assert!(
        (st["density"].as_f64().unwrap() - density).abs() < 1e-12,
        "{st}"
    );
    let examples = st["top_examples"].as_array().unwrap();
    assert!(!examples.is_empty(), "the densest feature has top examples");
    for e in examples {
        let peak = e["context"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["peak"] == true)
            .expect("the peak token is in its context");
        let (got, want) = (
            peak["activation"].as_f64().unwrap(),
            e["value"].as_f64().unwrap(),
        );
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "peak {got} vs stored {want}"
        );
        assert!(e["context"].as_array().unwrap().len() <= 25);
    }
    let html = get(a, &path);
    assert_eq!(html.status, 200);
    assert!(html.body.contains("Life along the chain") && html.body.contains("class=ctx"));

    // A chain of the sae-pt tree: the decoder cosine to the previous stage is feature_drift's.
    let drift = csv_rows(
        lake,
        "SELECT chain, layer, k, stage_to, feature, dec_cos FROM feature_drift WHERE chain <> 'tiny' ORDER BY chain, layer, k, step_to, feature LIMIT 1",
    );
    let d = &drift[0];
    let f = get(
        a,
        &format!(
            "/api/chain/{}/layer/{}/k/{}/feature/{}",
            d[0], d[1], d[2], d[4]
        ),
    )
    .json();
    let st = f["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == d[3].as_str())
        .unwrap();
    let want: f64 = d[5].parse().unwrap();
    assert!(
        (st["dec_cos_prev"].as_f64().unwrap() - want).abs() < 1e-6,
        "{st}"
    );
    // Its transition page.
    let stages = csv_rows(lake, &format!("SELECT stage_from, stage_to FROM sae_transitions WHERE chain = '{}' AND layer = {} AND k = {} ORDER BY step_to LIMIT 1", d[0], d[1], d[2]));
    let t = format!(
        "/chain/{}/layer/{}/k/{}/transition/{}/{}",
        d[0], d[1], d[2], stages[0][0], stages[0][1]
    );
    let tj = get(a, &format!("/api{t}")).json();
    let n: usize = csv_rows(lake, &format!("SELECT count(*) FROM feature_drift WHERE chain = '{}' AND layer = {} AND k = {} AND stage_to = '{}'", d[0], d[1], d[2], stages[0][1]))[0][0].parse().unwrap();
    assert_eq!(tj["n_features"].as_u64().unwrap() as usize, n);
    let q = &tj["quadrants"];
    let total: u64 = ["stable", "reweighted", "redirected", "rotated"]
        .iter()
        .map(|k| q[*k].as_u64().unwrap())
        .sum();
    assert_eq!(total as usize, n);
    assert_eq!(get(a, &t).status, 200);

    // Search by token and the SQL box.
    assert_eq!(get(a, "/search?text=the").status, 200);
    let r = get(
        a,
        &format!("/api/sql?q={}", enc("SELECT count(*) AS n FROM saes")),
    )
    .json();
    assert_eq!(
        r["rows"][0]["n"].as_u64().unwrap() as usize,
        csv_rows(lake, "SELECT count(*) FROM saes")[0][0]
            .parse::<usize>()
            .unwrap()
    );
    drop(server);
    assert_eq!(snapshot(lake), before, "the server changed the lake");
}

#[test]
fn bad_addresses_get_404s_naming_what_exists() {
    let lake = fixture_lake();
    let server = start(lake, &[]);
    let a = &server.addr;
    let r = get(a, "/api/chain/flexibel/layer/6/k/64/feature/1");
    assert_eq!(r.status, 404);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains("flexible"), "{err}");
    let tiny = csv_rows(
        lake,
        "SELECT layer, k, d_sae FROM saes WHERE chain = 'tiny'",
    );
    let r = get(
        a,
        &format!(
            "/chain/tiny/layer/{}/k/{}/feature/{}",
            tiny[0][0], tiny[0][1], tiny[0][2]
        ),
    );
    assert_eq!(r.status, 404);
    assert!(r.body.contains("features 0 to"), "{}", r.body);
    let r = get(
        a,
        &format!(
            "/api/chain/tiny/layer/{}/k/{}/transition/a/b",
            tiny[0][0], tiny[0][1]
        ),
    );
    assert_eq!(r.status, 404);
    assert_eq!(get(a, "/no/such/page").status, 404);
}

#[test]
fn the_sql_box_is_read_only_bounded_and_escaped() {
    let lake = fixture_lake();
    let before = snapshot(lake);
    let server = start(lake, &["--sql-rows", "5", "--sql-timeout", "0.001"]);
    let a = &server.addr;
    for q in [
        "CREATE TABLE x AS SELECT 1",
        "INSERT INTO stages SELECT * FROM stages",
        "COPY stages TO '/tmp/x.csv'",
        "SET datafusion.execution.batch_size = 1",
        "DROP TABLE saes",
    ] {
        let r = get(a, &format!("/api/sql?q={}", enc(q)));
        assert_eq!(r.status, 400, "{q}");
        assert!(
            r.json()["error"].as_str().unwrap().contains("read-only"),
            "{q}: {}",
            r.body
        );
    }
    // Too slow for the 1 ms limit: stopped, with a message.
    let slow = "SELECT count(*) FROM features a, features b, features c";
    let r = get(a, &format!("/api/sql?q={}", enc(slow)));
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("limit"),
        "{}",
        r.body
    );
    drop(server);
    let server = start(lake, &["--sql-rows", "5"]);
    let a = &server.addr;
    let r = request(
        a,
        "POST",
        "/api/sql",
        &[],
        &format!("q={}", enc("SELECT feature FROM features")),
    );
    let j = r.json();
    assert_eq!(j["rows"].as_array().unwrap().len(), 5);
    assert_eq!(j["truncated"], true);
    // Strings from the lake and from statements are text, never markup.
    let r = get(
        a,
        &format!("/sql?q={}", enc("SELECT '<script>alert(1)</script>' AS s")),
    );
    assert!(
        r.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        r.body
    );
    assert!(
        !r.body.contains("<script>alert"),
        "unescaped markup on the page"
    );
    drop(server);
    assert_eq!(snapshot(lake), before);
}

#[test]
fn a_token_is_always_required_when_given_and_loopback_is_the_default() {
    let lake = fixture_lake();
    let server = start(lake, &["--token", "s3cret"]);
    let a = &server.addr;
    assert_eq!(get(a, "/").status, 401);
    assert_eq!(get(a, "/api/").status, 401);
    assert_eq!(
        request(a, "GET", "/api/", &["Authorization: Bearer wrong"], "").status,
        401
    );
    assert_eq!(
        request(a, "GET", "/api/", &["Authorization: Bearer s3cret"], "").status,
        200
    );
    // A browser presents it once; the cookie carries it after.
    let r = get(a, "/search?token=s3cret&text=the");
    assert_eq!(r.status, 303, "{}", r.headers);
    let h = r.headers.to_lowercase();
    assert!(
        h.contains("set-cookie: saerl_token=s3cret")
            && h.contains("httponly")
            && h.contains("samesite=strict"),
        "{h}"
    );
    assert!(h.contains("location: /search?text=the"), "{h}");
    assert_eq!(
        request(a, "GET", "/", &["Cookie: saerl_token=s3cret"], "").status,
        200
    );
    drop(server);
    // Any address but loopback needs a token.
    let o = saerl(lake, &["serve", "--bind", "0.0.0.0:0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("without a token"), "{}", stderr(&o));
}

/// `vocab.text` is what a person reads: byte-level BPE's `Ġthe` is ` the`.
#[test]
fn vocab_holds_the_text_a_person_reads() {
    let lake = fixture_lake();
    let rows = csv_rows(
        lake,
        "SELECT token, '[' || text || ']' AS text FROM vocab WHERE token = 'Ġthe'",
    );
    assert!(!rows.is_empty(), "the fixture tokenizer has Ġthe");
    for r in &rows {
        assert_eq!(r[1], "[ the]", "{r:?}");
    }
}

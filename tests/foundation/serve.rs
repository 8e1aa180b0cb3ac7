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
    let hits = get(a, "/api/search?text=the").json()["hits"].clone();
    let want = csv_rows(
        lake,
        "SELECT t.chain, t.stage, t.layer, t.k, t.feature, count(*) AS hits FROM top_examples t JOIN vocab v \
         ON v.chain = t.chain AND v.stage = t.stage AND v.token_id = t.token_id WHERE trim(v.text) = 'the' \
         AND t.split = 'val' GROUP BY 1, 2, 3, 4, 5 ORDER BY hits DESC, t.chain, t.feature LIMIT 1",
    );
    assert!(
        !want.is_empty(),
        "some top example of the fixture lake is ' the'"
    );
    assert_eq!(hits[0]["hits"].to_string(), want[0][5], "{hits}");
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
    // Too slow for the 1 ms limit: stopped, with a message. (A count over a cross join of the
    // lake's tables can be answered from Parquet statistics in under 1 ms on a small fixture.)
    let slow = "SELECT max(value % 7) FROM generate_series(1, 1000000000000)";
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

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{what}: got {got}, expected {want}"
    );
}

/// The tiny SAE's key and its densest feature on val.
fn tiny_densest(lake: &Path) -> (String, String, String, String) {
    let t = &csv_rows(
        lake,
        "SELECT stage, layer, k FROM saes WHERE chain = 'tiny'",
    )[0];
    let f = &csv_rows(
        lake,
        &format!("SELECT feature FROM feature_stats WHERE chain = 'tiny' AND split = 'val' AND layer = {} AND k = {} ORDER BY fire_count DESC, feature LIMIT 1", t[1], t[2]),
    )[0][0];
    (t[0].clone(), t[1].clone(), t[2].clone(), f.clone())
}

#[test]
fn the_feature_page_tables_match_sql_and_numpy() {
    let lake = fixture_lake();
    let server = start(lake, &[]);
    let a = &server.addr;
    let (stage, layer, k, feature) = tiny_densest(lake);
    let fj = get(
        a,
        &format!("/api/chain/tiny/layer/{layer}/k/{k}/feature/{feature}"),
    )
    .json();
    let st = &fj["stages"][0];
    let encoded = |filter: &str| {
        format!(
            "SELECT pos, e['value'] AS v FROM (SELECT pos, unnest(topk_encode(x, 'tiny', '{stage}', {layer}, {k})) AS e \
             FROM activations WHERE chain = 'tiny' AND stage = '{stage}' AND layer = {layer} AND {filter}) WHERE e['feature'] = {feature}"
        )
    };

    // Every token of every context: this feature's activation there, as topk_encode gives it.
    let examples = st["top_examples"].as_array().unwrap();
    assert!(!examples.is_empty());
    for e in examples.iter().take(3) {
        let ctx = e["context"].as_array().unwrap();
        let (lo, hi) = (f64_of(&ctx[0]["pos"]), f64_of(&ctx[ctx.len() - 1]["pos"]));
        let want: std::collections::HashMap<i64, f64> = csv_rows(
            lake,
            &encoded(&format!(
                "doc_id = {} AND pos BETWEEN {lo} AND {hi}",
                e["doc_id"]
            )),
        )
        .iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect();
        for t in ctx {
            let p = t["pos"].as_i64().unwrap();
            close(
                &format!("activation at {p}"),
                f64_of(&t["activation"]),
                *want.get(&p).unwrap_or(&0.0),
            );
        }
        assert!(ctx
            .iter()
            .any(|t| t["peak"] == true && t["pos"] == e["pos"]));
    }

    // The histogram: non-zero val activations recounted in SQL into 40 bins of (0, hi].
    let h = &st["histogram"];
    let hi = f64_of(&h["hi"]);
    let bins = csv_rows(
        lake,
        &format!(
            "SELECT LEAST(CAST(floor(CAST(v AS REAL) / CAST({hi} AS REAL) * CAST(40 AS REAL)) AS INT), 39) AS b, count(*) AS n \
             FROM ({}) WHERE v > 0 GROUP BY 1 ORDER BY 1",
            encoded("split = 'val'")
        ),
    );
    let counts: Vec<i64> = h["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_i64().unwrap())
        .collect();
    assert_eq!(counts.len(), 40);
    let mut want = vec![0i64; 40];
    for b in &bins {
        want[b[0].parse::<usize>().unwrap()] = b[1].parse().unwrap();
    }
    assert_eq!(counts, want, "histogram of feature {feature}");
    let fire = &csv_rows(lake, &format!("SELECT fire_count FROM feature_stats WHERE chain = 'tiny' AND layer = {layer} AND k = {k} AND split = 'val' AND feature = {feature}"))[0][0];
    assert_eq!(counts.iter().sum::<i64>().to_string(), *fire);

    // Quantile examples: at most 5 per interval, inside it, and 5 wherever the interval has 5.
    let quantiles = st["quantile_examples"].as_array().unwrap();
    assert!(!quantiles.is_empty());
    for q in quantiles {
        let (lo, hi, b) = (
            f64_of(&q["lo"]),
            f64_of(&q["hi"]),
            q["bin"].as_u64().unwrap() as usize,
        );
        let ex = q["examples"].as_array().unwrap();
        let in_interval: i64 = counts[b * 4..b * 4 + 4].iter().sum();
        assert_eq!(ex.len() as i64, in_interval.min(5), "interval {b}");
        for e in ex {
            let v = f64_of(&e["value"]);
            assert!(v > lo - 1e-6 && v <= hi + 1e-6, "{v} outside ({lo}, {hi}]");
        }
    }

    // Logit effects: numpy over the fixture checkpoint's weights and the lake's decoder row.
    let model = fixtures().join("tiny-qwen2");
    let np = python_json(
        "logit_effects.py",
        &[model.as_os_str(), lake.as_os_str()]
            .into_iter()
            .chain(["tiny", &stage, &layer, &k, &feature].map(std::ffi::OsStr::new))
            .collect::<Vec<_>>(),
    );
    let lg = &st["logits"];
    assert_eq!(lg["norm_folded"], true);
    for dir in ["top", "bottom"] {
        let got = lg[dir].as_array().unwrap();
        let want = np[&feature][dir].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{dir}");
        let scale = f64_of(&want[0][1]).abs().max(1e-3);
        for (g, w) in got.iter().zip(want) {
            assert!(
                (f64_of(&g["value"]) - f64_of(&w[1])).abs() <= 1e-4 * scale,
                "{dir}: {g} vs {w}"
            );
            if (f64_of(&g["value"]) - f64_of(&w[1])).abs() <= 1e-6 * scale {
                assert_eq!(g["token_id"], w[0], "{dir}");
            }
        }
    }

    // A chain of the sae-pt tree: nearest features by SQL, the next stage's best match by
    // best_match(), the partner in another chain by match_features().
    let shared = &csv_rows(
        lake,
        "SELECT layer, k FROM saes WHERE chain <> 'tiny' GROUP BY layer, k HAVING count(DISTINCT chain) > 1 ORDER BY layer, k LIMIT 1",
    )[0];
    let pick = csv_rows(
        lake,
        &format!(
            "SELECT chain, layer, k, stage_from, stage_to, feature, best_feature, best_cos, aligned_cos FROM best_match() \
             WHERE chain <> 'tiny' AND layer = {} AND k = {} ORDER BY aligned_cos, chain, step_to, feature LIMIT 1",
            shared[0], shared[1]
        ),
    );
    let p = &pick[0];
    let (c, l, kk, from, to, f) = (&p[0], &p[1], &p[2], &p[3], &p[4], &p[5]);
    let fj = get(a, &format!("/api/chain/{c}/layer/{l}/k/{kk}/feature/{f}")).json();
    let at = |s: &str| -> Value {
        fj["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["stage"] == s)
            .unwrap()
            .clone()
    };
    let st = at(from);
    let aligned: f64 = p[8].parse().unwrap();
    if aligned < 0.7 && p[6] != *f {
        let m = &st["next_best_match"];
        assert_eq!(m["stage"], to.as_str());
        assert_eq!(m["feature"].to_string(), p[6]);
        close("best_cos", f64_of(&m["dec_cos"]), p[7].parse().unwrap());
    } else {
        assert!(st["next_best_match"].is_null(), "{st}");
    }
    let near = csv_rows(
        lake,
        &format!(
            "SELECT b.feature, decoder_cosine(a.w_dec, b.w_dec) AS c FROM features a JOIN features b \
             ON b.chain = a.chain AND b.stage = a.stage AND b.layer = a.layer AND b.k = a.k \
             WHERE a.chain = '{c}' AND a.stage = '{from}' AND a.layer = {l} AND a.k = {kk} AND a.feature = {f} \
             AND b.feature <> {f} ORDER BY c DESC LIMIT 5"
        ),
    );
    let got = st["nearest"].as_array().unwrap();
    assert_eq!(got.len(), near.len());
    for (g, w) in got.iter().zip(&near) {
        close(
            "nearest cosine",
            f64_of(&g["dec_cos"]),
            w[1].parse().unwrap(),
        );
    }
    assert_eq!(got[0]["feature"].to_string(), near[0][0]);
    let other = csv_rows(
        lake,
        &format!("SELECT DISTINCT chain FROM saes WHERE layer = {l} AND k = {kk} AND chain <> '{c}' ORDER BY chain LIMIT 1"),
    );
    let o = &other[0][0];
    let partner = st["partners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["chain"] == o.as_str())
        .unwrap_or_else(|| panic!("no partner in {o}: {st}"))
        .clone();
    let os = partner["stage"].as_str().unwrap();
    let m = csv_rows(
        lake,
        &format!("SELECT feature_b, dec_cos FROM match_features('{c}', '{from}', '{o}', '{os}', {l}, {kk}) WHERE feature_a = {f}"),
    );
    assert_eq!(partner["feature"].to_string(), m[0][0]);
    close(
        "partner cosine",
        f64_of(&partner["dec_cos"]),
        m[0][1].parse().unwrap(),
    );
    let has_stage = !csv_rows(lake, &format!("SELECT 1 FROM saes WHERE chain = '{o}' AND stage = '{from}' AND layer = {l} AND k = {kk}")).is_empty();
    if has_stage {
        assert_eq!(os, from.as_str(), "the partner is at the same stage name");
    }
}

#[test]
fn a_lake_without_page_tables_serves_and_stats_fills_in_only_them() {
    let (_dir, lake) = fixture_lake_copy();
    for t in ["feature_examples", "feature_histograms", "logit_effects"] {
        std::fs::remove_dir_all(lake.join(t)).unwrap();
    }
    let (_, layer, k, feature) = tiny_densest(&lake);
    let path = format!("/api/chain/tiny/layer/{layer}/k/{k}/feature/{feature}");
    {
        let server = start(&lake, &[]);
        let fj = get(&server.addr, &path).json();
        let notes = fj["notes"].to_string();
        assert!(
            notes.contains("saerl stats --chain tiny") && notes.contains("feature_examples"),
            "{notes}"
        );
        let st = &fj["stages"][0];
        assert!(st["logits"].is_null() && st["histogram"].is_null());
        // The top examples still show, each as its peak token.
        let ex = st["top_examples"].as_array().unwrap();
        assert!(!ex.is_empty());
        assert!(ex
            .iter()
            .all(|e| e["context"].as_array().unwrap().len() == 1));
    }
    let kept = |l: &Path| -> Vec<(std::path::PathBuf, u64)> {
        snapshot(l)
            .into_iter()
            .filter(|(p, _)| {
                // The commit log grows with every commit; the tables must not change.
                ![
                    "feature_examples",
                    "feature_histograms",
                    "logit_effects",
                    "_saerl",
                ]
                .iter()
                .any(|t| p.starts_with(t))
            })
            .collect()
    };
    let before = kept(&lake);
    let out = ok(&lake, &["stats", "--chain", "tiny"]);
    assert!(
        out.contains("feature_examples") && out.contains("logit_effects"),
        "{out}"
    );
    assert!(!out.contains("wrote feature_stats"), "{out}");
    assert_eq!(kept(&lake), before, "stats rewrote tables that existed");
    let server = start(&lake, &[]);
    let fj = get(&server.addr, &path).json();
    assert!(!fj["stages"][0]["logits"].is_null());
    assert!(
        fj["stages"][0]["top_examples"][0]["context"]
            .as_array()
            .unwrap()
            .len()
            > 1
    );
    assert!(ok(&lake, &["stats", "--chain", "tiny"]).contains("statistics exist, skipped"));
}

#[test]
fn the_sql_box_offers_its_rows_as_csv() {
    let lake = fixture_lake();
    let server = start(lake, &[]);
    let q = "SELECT chain, layer, k, count(*) AS n FROM saes GROUP BY chain, layer, k ORDER BY chain, layer, k";
    let r = get(&server.addr, &format!("/api/sql?q={}&format=csv", enc(q)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.to_lowercase().contains("text/csv"),
        "{}",
        r.headers
    );
    assert_eq!(
        r.body.trim(),
        ok(lake, &["sql", "--format", "csv", "-c", q]).trim()
    );
    let page = request(&server.addr, "POST", "/sql", &[], &format!("q={}", enc(q)));
    assert!(
        page.body.contains("format=csv"),
        "the SQL page offers the CSV"
    );
}

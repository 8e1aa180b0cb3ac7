//! What each page shows, as JSON (the `/api` twin returns it as it is; `html.rs` renders it).
//! Everything is read through the session's SQL, each statement one snapshot of the lake, plus
//! the SAE weights for per-token activations and decoder geometry.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::{App, Failure};
use crate::lake::{check_name, read_sae, PartitionKey, Table};
use crate::suggest::unknown;

/// Tokens shown on each side of a top example's peak.
const CONTEXT: i32 = 12;
/// Top examples shown per stage.
const TOP: usize = 10;
/// "Moved away": the index-aligned decoder cosine below this while another feature matches better.
const MOVED: f64 = 0.7;
/// Nearest features listed (decoder cosine within the same SAE).
const NEAREST: usize = 5;
/// Histogram bins of cosines.
const BINS: usize = 40;

type Row = Map<String, Value>;

impl App {
    /// One statement's rows as JSON objects.
    pub(super) async fn rows(&self, sql: &str) -> Result<Vec<Row>> {
        let ctx = self.ctx.lock().await;
        // One statement (the multi-statement runner's callback is not Send).
        let batches = crate::sql::exec::run_statement(&ctx, sql).await?;
        drop(ctx);
        batches_to_rows(&batches)
    }
}

pub(super) fn batches_to_rows(batches: &[arrow::array::RecordBatch]) -> Result<Vec<Row>> {
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_slice(&bytes)?)
}

fn s<'a>(r: &'a Row, k: &str) -> &'a str {
    r.get(k).and_then(Value::as_str).unwrap_or("")
}

fn f(r: &Row, k: &str) -> Option<f64> {
    r.get(k).and_then(Value::as_f64)
}

fn i(r: &Row, k: &str) -> i64 {
    r.get(k).and_then(Value::as_i64).unwrap_or(0)
}

/// A chain or stage from an address: plain names only (they become SQL literals).
fn name(what: &str, v: &str) -> Result<(), Failure> {
    check_name(what, v).map_err(|e| Failure::NotFound(format!("{e:#}")))
}

/// Every (chain, layer, k) with SAEs, for 404s and the study page.
async fn sae_groups(app: &App) -> Result<Vec<(String, i64, i64)>> {
    Ok(app
        .rows("SELECT DISTINCT chain, layer, k FROM saes ORDER BY chain, layer, k")
        .await?
        .iter()
        .map(|r| (s(r, "chain").to_string(), i(r, "layer"), i(r, "k")))
        .collect())
}

/// Stages with an SAE at (chain, layer, k), in step order: (stage, step).
async fn stages_of(
    app: &App,
    chain: &str,
    layer: i32,
    k: i32,
) -> Result<Vec<(String, i64)>, Failure> {
    name("chain", chain)?;
    let rows = app
        .rows(&format!(
            "SELECT s.stage, st.step FROM saes s JOIN stages st ON st.chain = s.chain AND st.stage = s.stage \
             WHERE s.chain = '{chain}' AND s.layer = {layer} AND s.k = {k} ORDER BY st.step"
        ))
        .await?;
    if rows.is_empty() {
        let groups = sae_groups(app).await?;
        let known: Vec<String> = groups
            .iter()
            .map(|(c, l, k)| format!("{c}/layer {l}/k {k}"))
            .collect();
        return Err(Failure::NotFound(unknown(
            "SAE group",
            &format!("{chain}/layer {layer}/k {k}"),
            "the lake",
            &known,
        )));
    }
    Ok(rows
        .iter()
        .map(|r| (s(r, "stage").to_string(), i(r, "step")))
        .collect())
}

/// The study page: every chain × layer × k with its stages and transitions.
pub(super) async fn study(app: &App) -> Result<Value, Failure> {
    let stages = app
        .rows(
            "SELECT s.chain, s.layer, s.k, s.stage, st.step, s.d_sae, e.nmse, e.frac_rec, e.mean_l0, fs.eff \
             FROM saes s JOIN stages st ON st.chain = s.chain AND st.stage = s.stage \
             LEFT JOIN evals e ON e.chain = s.chain AND e.stage = s.stage AND e.layer = s.layer AND e.k = s.k \
             LEFT JOIN (SELECT chain, stage, layer, k, effective_count(density) AS eff FROM feature_stats \
                        WHERE split = 'val' GROUP BY chain, stage, layer, k) fs \
               ON fs.chain = s.chain AND fs.stage = s.stage AND fs.layer = s.layer AND fs.k = s.k \
             ORDER BY s.chain, s.layer, s.k, st.step",
        )
        .await?;
    let drift = app
        .rows(
            "SELECT chain, layer, k, stage_from, stage_to, step_from, step_to, avg(dec_cos) AS dec_cos_mean, \
             avg(enc_cos) AS enc_cos_mean FROM feature_drift \
             GROUP BY chain, layer, k, stage_from, stage_to, step_from, step_to",
        )
        .await?;
    let life = app
        .rows(include_str!("../../queries/lifecycle.sql"))
        .await?;
    let key = |r: &Row| (s(r, "chain").to_string(), i(r, "layer"), i(r, "k"));
    let mut groups: BTreeMap<(String, i64, i64), (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for r in &stages {
        groups.entry(key(r)).or_default().0.push(json!({
            "stage": s(r, "stage"), "step": i(r, "step"), "d_sae": i(r, "d_sae"),
            "nmse": f(r, "nmse"), "frac_rec": f(r, "frac_rec"), "mean_l0": f(r, "mean_l0"),
            "effective_count": f(r, "eff"),
        }));
    }
    for r in &drift {
        let l = life.iter().find(|x| {
            key(x) == key(r)
                && s(x, "stage_from") == s(r, "stage_from")
                && s(x, "stage_to") == s(r, "stage_to")
        });
        let alive = l.map(|x| i(x, "stayed") + i(x, "born"));
        if let Some(g) = groups.get_mut(&key(r)) {
            g.1.push(json!({
                "stage_from": s(r, "stage_from"), "stage_to": s(r, "stage_to"),
                "step_from": i(r, "step_from"), "step_to": i(r, "step_to"),
                "dec_cos_mean": f(r, "dec_cos_mean"), "enc_cos_mean": f(r, "enc_cos_mean"),
                "alive": alive, "born": l.map(|x| i(x, "born")), "died": l.map(|x| i(x, "died")),
            }));
        }
    }
    for g in groups.values_mut() {
        g.1.sort_by_key(|t| t["step_to"].as_i64());
    }
    // Groups with measurements (evals or statistics) first: they are what a researcher opens.
    let measured = |st: &[Value]| {
        st.iter()
            .any(|s| !s["nmse"].is_null() || !s["effective_count"].is_null())
    };
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|(_, (st, _))| !measured(st));
    let missing = missing_tables(app).await?;
    Ok(json!({
        "lake": app.lake.location(),
        "groups": groups.into_iter().map(|((c, l, k), (st, tr))| json!({
            "chain": c, "layer": l, "k": k, "stages": st, "transitions": tr,
        })).collect::<Vec<_>>(),
        "missing": missing,
    }))
}

/// Which tables the pages use are still empty, with the command that fills each.
async fn missing_tables(app: &App) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (table, command) in [
        (Table::Evals, "saerl eval --chain C"),
        (Table::FeatureStats, "saerl stats --chain C"),
        (Table::Activations, "saerl ingest --chain C --stage S"),
    ] {
        if app.lake.partitions(table)?.is_empty() {
            out.push(json!({ "table": table.name(), "command": command }));
        }
    }
    Ok(out)
}

/// Cosine of two vectors (0 for a zero vector).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        (ab / (aa * bb).sqrt()).clamp(-1.0, 1.0)
    }
}

fn row_of(m: &[f32], i: usize, d: usize) -> &[f32] {
    &m[i * d..(i + 1) * d]
}

/// The feature page: the feature at every stage of its chain.
pub(super) async fn feature(
    app: &App,
    chain: &str,
    layer: i32,
    k: i32,
    feature: i32,
    split: &str,
) -> Result<Value, Failure> {
    if split != "val" && split != "train" {
        return Err(Failure::BadRequest(format!(
            "split must be val or train, not {split:?}"
        )));
    }
    let stages = stages_of(app, chain, layer, k).await?;
    let keys: Vec<PartitionKey> = stages
        .iter()
        .map(|(st, _)| PartitionKey::sae(chain, st, layer, k))
        .collect();
    let saes = keys
        .iter()
        .map(|key| read_sae(&app.lake, key))
        .collect::<Result<Vec<_>>>()?;
    let d_sae = saes[0].d_sae;
    if feature < 0 || feature as usize >= d_sae {
        return Err(Failure::NotFound(format!(
            "no feature {feature} in chain {chain} layer {layer} k {k}: its SAEs have features 0 to {}",
            d_sae - 1
        )));
    }
    let fi = feature as usize;
    let stats = app
        .rows(&format!(
            "SELECT stage, density, mean_act, max_act FROM feature_stats WHERE chain = '{chain}' \
             AND layer = {layer} AND k = {k} AND feature = {feature} AND split = 'val'"
        ))
        .await?;
    let mut out_stages = Vec::new();
    let first = &saes[0];
    for (n, ((stage, step), sae)) in stages.iter().zip(&saes).enumerate() {
        let d = sae.d_model;
        let dec = row_of(&sae.w_dec, fi, d);
        let enc = row_of(&sae.w_enc, fi, d);
        let prev = n.checked_sub(1).map(|p| &saes[p]);
        let st = stats.iter().find(|r| s(r, "stage") == stage);
        let density = st.and_then(|r| f(r, "density"));
        // The best match in the next stage, when the index-aligned feature has moved away.
        let next_match = saes.get(n + 1).and_then(|next| {
            let aligned = cosine(dec, row_of(&next.w_dec, fi, d));
            let (best, cos) = (0..next.d_sae)
                .map(|j| (j, cosine(dec, row_of(&next.w_dec, j, d))))
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            (aligned < MOVED && best != fi).then(|| json!({
                "stage": stages[n + 1].0, "feature": best, "dec_cos": cos, "aligned_dec_cos": aligned,
            }))
        });
        let mut nearest: Vec<(usize, f64)> = (0..sae.d_sae)
            .filter(|&j| j != fi)
            .map(|j| (j, cosine(dec, row_of(&sae.w_dec, j, d))))
            .collect();
        nearest.sort_by(|a, b| b.1.total_cmp(&a.1));
        nearest.truncate(NEAREST);
        let examples = top_examples(app, chain, stage, layer, k, fi, split, sae).await?;
        out_stages.push(json!({
            "stage": stage,
            "step": step,
            "density": density,
            "alive": density.map(|x| x > 1e-4),
            "mean_act": st.and_then(|r| f(r, "mean_act")),
            "max_act": st.and_then(|r| f(r, "max_act")),
            "dec_cos_prev": prev.map(|p| cosine(dec, row_of(&p.w_dec, fi, d))),
            "enc_cos_prev": prev.map(|p| cosine(enc, row_of(&p.w_enc, fi, d))),
            "dec_cos_first": cosine(dec, row_of(&first.w_dec, fi, d)),
            "enc_cos_first": cosine(enc, row_of(&first.w_enc, fi, d)),
            "next_best_match": next_match,
            "nearest": nearest.iter().map(|(j, c)| json!({ "feature": j, "dec_cos": c })).collect::<Vec<_>>(),
            "top_examples": examples,
            "logits": Value::Null,
        }));
    }
    Ok(json!({
        "chain": chain, "layer": layer, "k": k, "feature": feature, "split": split,
        "d_sae": d_sae,
        "stages": out_stages,
        "notes": [
            "logit effects, quantile examples and histograms need tables a later `saerl stats` writes; this lake has none",
        ],
    }))
}

/// A stage's top examples of feature `fi` with their contexts: the tokens around each peak,
/// each with this feature's activation there (from the stored activations and the SAE).
#[allow(clippy::too_many_arguments)]
async fn top_examples(
    app: &App,
    chain: &str,
    stage: &str,
    layer: i32,
    k: i32,
    fi: usize,
    split: &str,
    sae: &crate::sae::Sae,
) -> Result<Vec<Value>> {
    let tops = app
        .rows(&format!(
            "SELECT rank, doc_id, pos, token_id, value FROM top_examples WHERE chain = '{chain}' AND stage = '{stage}' \
             AND layer = {layer} AND k = {k} AND feature = {fi} AND (split = '{split}' OR split IS NULL) \
             ORDER BY rank LIMIT {TOP}"
        ))
        .await?;
    if tops.is_empty() {
        return Ok(Vec::new());
    }
    let docs: Vec<String> = tops.iter().map(|r| i(r, "doc_id").to_string()).collect();
    let acts = app
        .rows(&format!(
            "SELECT a.doc_id, a.pos, a.token_id, v.token, a.x FROM activations a \
             LEFT JOIN vocab v ON v.chain = a.chain AND v.stage = a.stage AND v.token_id = a.token_id \
             WHERE a.chain = '{chain}' AND a.stage = '{stage}' AND a.layer = {layer} AND a.doc_id IN ({})",
            docs.join(", ")
        ))
        .await?;
    let mut by_doc: HashMap<i64, Vec<&Row>> = HashMap::new();
    for r in &acts {
        by_doc.entry(i(r, "doc_id")).or_default().push(r);
    }
    let mut out = Vec::new();
    for t in &tops {
        let (doc, pos) = (i(t, "doc_id"), i(t, "pos"));
        let mut tokens: Vec<&&Row> = by_doc
            .get(&doc)
            .map(|v| {
                v.iter()
                    .filter(|r| (i(r, "pos") - pos).abs() <= CONTEXT as i64)
                    .collect()
            })
            .unwrap_or_default();
        tokens.sort_by_key(|r| i(r, "pos"));
        let context: Vec<Value> = tokens
            .iter()
            .map(|r| {
                let x: Vec<f32> = r
                    .get("x")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect())
                    .unwrap_or_default();
                let act = if x.len() == sae.d_model {
                    sae.encode(&x)
                        .iter()
                        .find(|(j, _)| *j as usize == fi)
                        .map_or(0.0, |(_, v)| *v as f64)
                } else {
                    0.0
                };
                json!({
                    "pos": i(r, "pos"),
                    "token_id": i(r, "token_id"),
                    "text": crate::model::token_text::symbol_text(s(r, "token")),
                    "activation": act,
                    "peak": i(r, "pos") == pos,
                })
            })
            .collect();
        out.push(json!({
            "rank": i(t, "rank"), "doc_id": doc, "pos": pos, "value": f(t, "value"), "context": context,
        }));
    }
    Ok(out)
}

fn histogram(values: &[f64], lo: f64, hi: f64) -> Vec<usize> {
    let mut bins = vec![0; BINS];
    for &v in values {
        let b = (((v - lo) / (hi - lo)) * BINS as f64).floor() as isize;
        bins[b.clamp(0, BINS as isize - 1) as usize] += 1;
    }
    bins
}

/// The median by linear interpolation (numpy's default).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = 0.5 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The transition page: how the dictionary moved from stage a to b.
pub(super) async fn transition(
    app: &App,
    chain: &str,
    layer: i32,
    k: i32,
    a: &str,
    b: &str,
) -> Result<Value, Failure> {
    let stages = stages_of(app, chain, layer, k).await?;
    name("stage", a)?;
    name("stage", b)?;
    let pos = |st: &str| stages.iter().position(|(x, _)| x == st);
    match (pos(a), pos(b)) {
        (Some(x), Some(y)) if y == x + 1 => {}
        _ => {
            let known: Vec<String> = stages
                .windows(2)
                .map(|w| format!("{} → {}", w[0].0, w[1].0))
                .collect();
            return Err(Failure::NotFound(unknown(
                "transition",
                &format!("{a} → {b}"),
                &format!("chain {chain} layer {layer} k {k}"),
                &known,
            )));
        }
    }
    let rows = app
        .rows(&format!(
            "SELECT feature, dec_cos, enc_cos FROM feature_drift WHERE chain = '{chain}' AND layer = {layer} \
             AND k = {k} AND stage_from = '{a}' AND stage_to = '{b}' ORDER BY feature"
        ))
        .await?;
    let dec: Vec<f64> = rows
        .iter()
        .map(|r| f(r, "dec_cos").unwrap_or(f64::NAN))
        .collect();
    let enc: Vec<f64> = rows
        .iter()
        .map(|r| f(r, "enc_cos").unwrap_or(f64::NAN))
        .collect();
    let (md, me) = (median(&dec), median(&enc));
    let mut quadrants = [0usize; 4];
    for (x, y) in dec.iter().zip(&enc) {
        let q = match (*x >= md, *y >= me) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        };
        quadrants[q] += 1;
    }
    let mut drifted: Vec<usize> = (0..dec.len()).collect();
    drifted.sort_by(|&x, &y| dec[x].total_cmp(&dec[y]));
    drifted.truncate(20);
    let dens = app
        .rows(&format!(
            "SELECT a.feature, a.density AS da, b.density AS db FROM feature_stats a JOIN feature_stats b \
             ON b.chain = a.chain AND b.layer = a.layer AND b.k = a.k AND b.feature = a.feature AND b.split = a.split \
             WHERE a.chain = '{chain}' AND a.layer = {layer} AND a.k = {k} AND a.split = 'val' \
             AND a.stage = '{a}' AND b.stage = '{b}' ORDER BY a.feature"
        ))
        .await?;
    let list = |pred: &dyn Fn(f64, f64) -> bool| -> Vec<i64> {
        dens.iter()
            .filter(|r| pred(f(r, "da").unwrap_or(0.0), f(r, "db").unwrap_or(0.0)))
            .map(|r| i(r, "feature"))
            .collect()
    };
    let lo = dec
        .iter()
        .chain(&enc)
        .cloned()
        .fold(1.0f64, f64::min)
        .min(0.0);
    Ok(json!({
        "chain": chain, "layer": layer, "k": k, "stage_from": a, "stage_to": b,
        "n_features": rows.len(),
        "dec_cos_median": md, "enc_cos_median": me,
        "histogram": { "lo": lo, "hi": 1.0, "dec_cos": histogram(&dec, lo, 1.0), "enc_cos": histogram(&enc, lo, 1.0) },
        "quadrants": { "stable": quadrants[0], "reweighted": quadrants[1], "redirected": quadrants[2], "rotated": quadrants[3] },
        "points": dec.iter().zip(&enc).map(|(x, y)| [x, y]).collect::<Vec<_>>(),
        "most_drifted": drifted.iter().map(|&j| json!({ "feature": j, "dec_cos": dec[j], "enc_cos": enc[j] })).collect::<Vec<_>>(),
        "born": list(&|da, db| da <= 1e-4 && db > 1e-4),
        "died": list(&|da, db| da > 1e-4 && db <= 1e-4),
        "has_stats": !dens.is_empty(),
    }))
}

/// Search: features whose top examples contain a token (as a person types it).
pub(super) async fn search(app: &App, q: &HashMap<String, String>) -> Result<Value, Failure> {
    let groups = sae_groups(app).await?;
    let Some(text) = q.get("text").filter(|t| !t.is_empty()) else {
        return Ok(
            json!({ "groups": groups.iter().map(|(c, l, k)| json!({"chain": c, "layer": l, "k": k})).collect::<Vec<_>>(), "hits": [] }),
        );
    };
    // Byte-level BPE spells a leading space `Ġ`; match either spelling.
    let lit = |t: &str| t.replace('\'', "''");
    let spaced = lit(&format!("Ġ{}", text.trim_start()));
    let rows = app
        .rows(&format!(
            "SELECT t.chain, t.stage, t.layer, t.k, t.feature, count(*) AS hits, max(t.value) AS best \
             FROM top_examples t JOIN vocab v ON v.chain = t.chain AND v.stage = t.stage AND v.token_id = t.token_id \
             WHERE (v.token = '{}' OR v.token = '{spaced}') AND (t.split = 'val' OR t.split IS NULL) \
             GROUP BY t.chain, t.stage, t.layer, t.k, t.feature ORDER BY hits DESC, best DESC, t.chain, t.feature LIMIT 50",
            lit(text)
        ))
        .await?;
    Ok(json!({
        "text": text,
        "groups": groups.iter().map(|(c, l, k)| json!({"chain": c, "layer": l, "k": k})).collect::<Vec<_>>(),
        "hits": rows,
    }))
}

/// The SQL box: one read-only statement within the row and time limits.
pub(super) async fn sql_box(app: &App, q: Option<&str>) -> Result<Value, Failure> {
    let Some(q) = q.map(str::trim).filter(|q| !q.is_empty()) else {
        return Ok(json!({ "q": "", "columns": [], "rows": [] }));
    };
    let statements = datafusion::sql::parser::DFParser::parse_sql(q)
        .map_err(|e| Failure::BadRequest(format!("{e}")))?;
    if statements.len() != 1 {
        return Err(Failure::BadRequest(
            "the SQL box runs one statement at a time".into(),
        ));
    }
    use datafusion::sql::parser::Statement as S;
    use datafusion::sql::sqlparser::ast::Statement as A;
    let read_only = match &statements[0] {
        S::Statement(s) => matches!(**s, A::Query(_) | A::Explain { .. }),
        S::Explain(_) => true,
        _ => false,
    };
    if !read_only {
        return Err(Failure::BadRequest(
            "the SQL box is read-only: only SELECT, WITH and EXPLAIN (no DDL, DML, COPY or SET)"
                .into(),
        ));
    }
    let limit = app.cfg.sql_rows;
    let run = async {
        let ctx = app.ctx.lock().await;
        let sql = q.trim_end_matches(';');
        crate::sql::exec::run_statement(&ctx, sql).await
    };
    let batches = match tokio::time::timeout(app.cfg.sql_timeout, run).await {
        Ok(r) => r.map_err(|e| Failure::BadRequest(crate::error_text(&e)))?,
        Err(_) => {
            return Err(Failure::BadRequest(format!(
                "the statement ran past the SQL box's limit of {} s and was stopped",
                app.cfg.sql_timeout.as_secs_f64()
            )))
        }
    };
    let columns = crate::sql::format::column_names(&batches);
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut kept = Vec::new();
    let mut left = limit;
    for b in &batches {
        if left == 0 {
            break;
        }
        let n = b.num_rows().min(left);
        kept.push(b.slice(0, n));
        left -= n;
    }
    let rows = batches_to_rows(&kept)?;
    Ok(json!({
        "q": q, "columns": columns, "rows": rows, "total_rows": total, "truncated": total > limit,
        "row_limit": limit,
    }))
}

//! What each page shows, as JSON (the `/api` twin returns it as it is; `html.rs` renders it).
//! Everything is read through the session's SQL, each statement one snapshot of the lake: the
//! feature pages from the tables `stats` writes for them (`Table::PAGES`), so a page reads a
//! few rows per stage, never activations or weights.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::{App, Failure};
use crate::lake::{check_name, PartitionKey, Table};
use crate::suggest::unknown;

/// "Moved away": the index-aligned decoder cosine below this while another feature matches better.
const MOVED: f64 = 0.7;
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
        .rows(&format!(
            "SELECT chain, layer, k, stage_from, stage_to, step_from, step_to, avg(dec_cos) AS dec_cos_mean, \
             avg(enc_cos) AS enc_cos_mean FROM {} \
             GROUP BY chain, layer, k, stage_from, stage_to, step_from, step_to",
            drift_source(app)?
        ))
        .await?;
    let life = app
        .rows(include_str!("../../queries/lifecycle.sql"))
        .await?;
    let key = |r: &Row| (s(r, "chain").to_string(), i(r, "layer"), i(r, "k"));
    // Per (chain, layer, k): the stages' quality rows and the transitions' drift rows.
    type Group = (Vec<Value>, Vec<Value>);
    let mut groups: BTreeMap<(String, i64, i64), Group> = BTreeMap::new();
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

/// Per-feature drift with `feature_drift`'s columns: from `feature_transitions` when every SAE
/// has it (a few columns per stage), else computed from the weights by `feature_drift`.
fn drift_source(app: &App) -> Result<&'static str> {
    let n = |t| app.lake.partitions(t).map(|p| p.len());
    Ok(if n(Table::FeatureTransitions)? == n(Table::Saes)? {
        "(SELECT t.chain, t.layer, t.k, t.stage_from, t.stage_to, t.step_from, t.step_to, f.feature, \
         f.dec_cos, f.enc_cos FROM sae_transitions t JOIN feature_transitions f ON f.chain = t.chain \
         AND f.layer = t.layer AND f.k = t.k AND f.stage = t.stage_to AND f.stage_from = t.stage_from)"
    } else {
        "feature_drift"
    })
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

/// Rows of a feature page table for one (chain, layer, k, feature), every stage at once.
async fn feature_rows(
    app: &App,
    table: Table,
    cols: &str,
    g: &Group<'_>,
    feature: i32,
    extra: String,
) -> Result<Vec<Row>> {
    app.rows(&format!(
        "SELECT stage, {cols} FROM {} WHERE chain = '{}' AND layer = {} AND k = {} AND feature = {feature}{extra}",
        table.name(),
        g.chain,
        g.layer,
        g.k
    ))
    .await
}

/// A (chain, layer, k): the SAEs a feature page follows.
struct Group<'a> {
    chain: &'a str,
    layer: i32,
    k: i32,
}

/// The readable text of each token id a page shows, from `vocab` (its `text`, or the byte-level
/// symbol decoded for lakes written before it) of the first of `stages` that has one: RL
/// fine-tuning keeps the tokenizer, and one stage's file is one read (an IN list prunes nothing).
async fn token_texts(
    app: &App,
    chain: &str,
    stages: &[(String, i64)],
    ids: &[i64],
) -> Result<HashMap<i64, String>> {
    let mut with_vocab = None;
    for (st, _) in stages {
        if app
            .lake
            .has_partition(Table::Vocab, &PartitionKey::stage(chain, st))?
        {
            with_vocab = Some(st);
            break;
        }
    }
    let (Some(stage), false) = (with_vocab, ids.is_empty()) else {
        return Ok(HashMap::new());
    };
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    let rows = app
        .rows(&format!(
            "SELECT token_id, token, text FROM vocab WHERE chain = '{chain}' AND stage = '{stage}' AND token_id IN ({})",
            list.join(", ")
        ))
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let t = match r.get("text").and_then(Value::as_str) {
                Some(t) => t.to_string(),
                None => crate::model::token_text::symbol_text(s(r, "token")),
            };
            (i(r, "token_id"), t)
        })
        .collect())
}

fn ints(v: Option<&Value>) -> Vec<i64> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

fn floats(v: Option<&Value>) -> Vec<f64> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// An example with its context, each token with its text and this feature's activation.
fn example(r: &Row, texts: &HashMap<i64, String>) -> Value {
    let (pos, start) = (i(r, "pos"), i(r, "context_start"));
    let acts = floats(r.get("context_acts"));
    let context: Vec<Value> = ints(r.get("context_tokens"))
        .iter()
        .zip(&acts)
        .enumerate()
        .map(|(n, (t, a))| {
            let p = start + n as i64;
            json!({
                "pos": p, "token_id": t, "text": text_of(texts, *t),
                "activation": a, "peak": p == pos,
            })
        })
        .collect();
    json!({ "rank": i(r, "rank"), "doc_id": i(r, "doc_id"), "pos": pos, "value": f(r, "value"), "context": context })
}

/// Whether any SAE of the group has a partition of `table`.
fn group_has(app: &App, table: Table, g: &Group<'_>) -> Result<bool> {
    Ok(app
        .lake
        .partitions(table)?
        .iter()
        .any(|(key, _)| key.chain == g.chain && key.layer == Some(g.layer) && key.k == Some(g.k)))
}

/// A note naming the page tables this group lacks and the command that writes them.
fn page_notes(app: &App, g: &Group<'_>, tables: &[Table]) -> Result<Vec<String>> {
    let mut lacking = Vec::new();
    for &t in tables {
        if !group_has(app, t, g)? {
            lacking.push(t.name());
        }
    }
    Ok(if lacking.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "this lake has no {} for chain {} layer {} k {}: `saerl stats --chain {}` writes them (it fills in only what is missing)",
            lacking.join(", "),
            g.chain,
            g.layer,
            g.k,
            g.chain
        )]
    })
}

/// One feature's rows of every page table, all stages at once.
struct FeatureTables {
    stats: Vec<Row>,
    moves: Vec<Row>,
    near: Vec<Row>,
    examples: Vec<Row>,
    hist: Vec<Row>,
    logits: Vec<Row>,
    partners: Vec<Row>,
}

impl FeatureTables {
    async fn read(app: &App, g: &Group<'_>, feature: i32, split: &str) -> Result<Self> {
        let this_split = format!(" AND split = '{split}'");
        let rows = |t: Table, cols: &'static str, extra: String| {
            feature_rows(app, t, cols, g, feature, extra)
        };
        let mut examples = rows(
            Table::FeatureExamples,
            "kind, bin, rank, doc_id, pos, value, context_start, context_tokens, context_acts",
            format!("{this_split} ORDER BY kind, bin, rank"),
        )
        .await?;
        if examples.is_empty() && !group_has(app, Table::FeatureExamples, g)? {
            // A lake without contexts still shows its top examples (the peak token alone).
            examples = rows(
                Table::TopExamples,
                "'top' AS kind, rank, doc_id, pos, value, pos AS context_start, \
                 make_array(token_id) AS context_tokens, make_array(value) AS context_acts",
                format!(
                    " AND (split = '{split}' OR split IS NULL) AND rank <= {} ORDER BY rank",
                    crate::sae::dashboard::TOP_IN_CONTEXT
                ),
            )
            .await?;
        }
        Ok(Self {
            stats: rows(
                Table::FeatureStats,
                "density, mean_act, max_act",
                " AND split = 'val'".into(),
            )
            .await?,
            moves: rows(
                Table::FeatureTransitions,
                "dec_cos, enc_cos, best_match, best_cos, dec_cos_first, enc_cos_first",
                String::new(),
            )
            .await?,
            near: rows(
                Table::FeatureNeighbors,
                "rank, neighbor, dec_cos",
                " ORDER BY rank".into(),
            )
            .await?,
            examples,
            hist: rows(
                Table::FeatureHistograms,
                "n_nonzero, hi, counts",
                this_split.clone(),
            )
            .await?,
            logits: rows(
                Table::LogitEffects,
                "direction, rank, token_id, value, norm_folded",
                " ORDER BY direction, rank".into(),
            )
            .await?,
            partners: rows(
                Table::FeaturePartners,
                "other_chain, other_stage, partner, dec_cos",
                " ORDER BY other_chain".into(),
            )
            .await?,
        })
    }

    /// Every token id the examples and logit effects show.
    fn token_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .examples
            .iter()
            .flat_map(|r| ints(r.get("context_tokens")))
            .chain(self.logits.iter().map(|r| i(r, "token_id")))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

fn at<'a>(rows: &'a [Row], stage: &str) -> Vec<&'a Row> {
    rows.iter().filter(|r| s(r, "stage") == stage).collect()
}

fn text_of(texts: &HashMap<i64, String>, t: i64) -> String {
    texts.get(&t).cloned().unwrap_or_else(|| format!("#{t}"))
}

/// A stage's top examples, and its quantile examples per interval of (0, hi].
fn examples_json(
    ex: &[&Row],
    hist: Option<&Row>,
    texts: &HashMap<i64, String>,
) -> (Vec<Value>, Vec<Value>) {
    let top = ex
        .iter()
        .filter(|r| s(r, "kind") == "top")
        .map(|r| example(r, texts))
        .collect();
    let mut quantiles: Vec<Value> = Vec::new();
    let hi = hist.and_then(|h| f(h, "hi"));
    let bins = crate::sae::dashboard::QUANTILE_BINS as f64;
    for r in ex.iter().filter(|r| s(r, "kind") == "quantile") {
        let b = i(r, "bin");
        if quantiles
            .last()
            .map(|q| q["bin"].as_i64() != Some(b))
            .unwrap_or(true)
        {
            quantiles.push(json!({
                "bin": b,
                "lo": hi.map(|h| h * b as f64 / bins),
                "hi": hi.map(|h| h * (b + 1) as f64 / bins),
                "examples": [],
            }));
        }
        quantiles.last_mut().unwrap()["examples"]
            .as_array_mut()
            .unwrap()
            .push(example(r, texts));
    }
    (top, quantiles)
}

/// A stage's logit effects, with the raised tokens that entered or left the list since the
/// previous stage that had them (`prev_top` carries that list along the chain).
fn logits_json(
    lg: &[&Row],
    texts: &HashMap<i64, String>,
    prev_top: &mut Option<Vec<String>>,
) -> Option<Value> {
    if lg.is_empty() {
        return None;
    }
    let tokens = |dir: &str| -> Vec<Value> {
        lg.iter()
            .filter(|r| s(r, "direction") == dir)
            .map(|r| {
                let text = text_of(texts, i(r, "token_id"));
                json!({ "token_id": i(r, "token_id"), "token": text, "text": text, "value": f(r, "value") })
            })
            .collect()
    };
    let top = tokens("top");
    let names: Vec<String> = top
        .iter()
        .map(|t| t["text"].as_str().unwrap_or("").to_string())
        .collect();
    let (entered, left): (Vec<&String>, Vec<&String>) = match prev_top.as_ref() {
        Some(p) => (
            names.iter().filter(|t| !p.contains(t)).collect(),
            p.iter().filter(|t| !names.contains(t)).collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let v = json!({ "top": top, "bottom": tokens("bottom"), "entered": entered, "left": left,
                    "norm_folded": lg[0].get("norm_folded").and_then(Value::as_bool) });
    *prev_top = Some(names);
    Some(v)
}

/// The feature page: the feature at every stage of its chain, from the tables `stats` writes.
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
    let g = Group { chain, layer, k };
    let d_sae = app
        .rows(&format!(
            "SELECT max(d_sae) AS d FROM saes WHERE chain = '{chain}' AND layer = {layer} AND k = {k}"
        ))
        .await?
        .first()
        .map_or(0, |r| i(r, "d"));
    if feature < 0 || feature as i64 >= d_sae {
        return Err(Failure::NotFound(format!(
            "no feature {feature} in chain {chain} layer {layer} k {k}: its SAEs have features 0 to {}",
            d_sae - 1
        )));
    }
    let t = FeatureTables::read(app, &g, feature, split).await?;
    let texts = token_texts(app, chain, &stages, &t.token_ids()).await?;
    let mut prev_top = None;
    let out_stages: Vec<Value> = (0..stages.len())
        .map(|n| feature_at_stage(&t, &stages, n, feature, &texts, &mut prev_top))
        .collect();
    let mut notes = page_notes(
        app,
        &g,
        &[
            Table::FeatureStats,
            Table::FeatureExamples,
            Table::FeatureHistograms,
            Table::FeatureTransitions,
            Table::FeatureNeighbors,
        ],
    )?;
    if !group_has(app, Table::LogitEffects, &g)? {
        notes.push(format!("no logit effects: `saerl stats --chain {chain}` writes them for stages whose model (stages.model_path) is on this machine"));
    }
    Ok(json!({
        "chain": chain, "layer": layer, "k": k, "feature": feature, "split": split,
        "d_sae": d_sae,
        "stages": out_stages,
        "notes": notes,
    }))
}

/// One stage's part of a feature's page: its statistics, movement, neighbours, partners,
/// examples and logit effects (`prev_top`: the previous stage's top tokens, to mark changes).
fn feature_at_stage(
    t: &FeatureTables,
    stages: &[(String, i64)],
    n: usize,
    feature: i32,
    texts: &HashMap<i64, String>,
    prev_top: &mut Option<Vec<String>>,
) -> Value {
    let (stage, step) = &stages[n];
    let st = at(&t.stats, stage).first().copied();
    let mv = at(&t.moves, stage).first().copied();
    let density = st.and_then(|r| f(r, "density"));
    let hist = at(&t.hist, stage).first().copied();
    let (top, quantiles) = examples_json(&at(&t.examples, stage), hist, texts);
    json!({
        "stage": stage,
        "step": step,
        "density": density,
        "alive": density.map(|x| x > 1e-4),
        "mean_act": st.and_then(|r| f(r, "mean_act")),
        "max_act": st.and_then(|r| f(r, "max_act")),
        "dec_cos_prev": mv.and_then(|r| f(r, "dec_cos")),
        "enc_cos_prev": mv.and_then(|r| f(r, "enc_cos")),
        "dec_cos_first": mv.and_then(|r| f(r, "dec_cos_first")),
        "enc_cos_first": mv.and_then(|r| f(r, "enc_cos_first")),
        "next_best_match": stages.get(n + 1).and_then(|(next, _)| next_best_match(t, next, feature)),
        "nearest": at(&t.near, stage).iter().map(|r| json!({ "feature": i(r, "neighbor"), "dec_cos": f(r, "dec_cos") })).collect::<Vec<_>>(),
        "partners": at(&t.partners, stage).iter().map(|r| json!({ "chain": s(r, "other_chain"), "stage": s(r, "other_stage"), "feature": i(r, "partner"), "dec_cos": f(r, "dec_cos") })).collect::<Vec<_>>(),
        "top_examples": top,
        "quantile_examples": quantiles,
        "histogram": hist.map(|r| json!({
            "lo": 0.0, "hi": f(r, "hi"), "n_nonzero": i(r, "n_nonzero"), "counts": ints(r.get("counts")),
        })),
        "logits": logits_json(&at(&t.logits, stage), texts, prev_top),
    })
}

/// The feature's best match in stage `next`, when the index-aligned feature has moved away.
fn next_best_match(t: &FeatureTables, next: &str, feature: i32) -> Option<Value> {
    let m = *at(&t.moves, next).first()?;
    let (aligned, best, cos) = (
        f(m, "dec_cos")?,
        m.get("best_match")?.as_i64()?,
        f(m, "best_cos")?,
    );
    (aligned < MOVED && best != feature as i64).then(|| {
        json!({
            "stage": next, "feature": best, "dec_cos": cos, "aligned_dec_cos": aligned,
        })
    })
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

/// Refuses a transition `a → b` unless b is the stage right after a among `stages` (of the
/// SAE group `group`), naming the transitions there are.
fn consecutive(stages: &[(String, i64)], a: &str, b: &str, group: &str) -> Result<(), Failure> {
    let pos = |st: &str| stages.iter().position(|(x, _)| x == st);
    match (pos(a), pos(b)) {
        (Some(x), Some(y)) if y == x + 1 => Ok(()),
        _ => {
            let known: Vec<String> = stages
                .windows(2)
                .map(|w| format!("{} → {}", w[0].0, w[1].0))
                .collect();
            Err(Failure::NotFound(unknown(
                "transition",
                &format!("{a} → {b}"),
                group,
                &known,
            )))
        }
    }
}

/// Features per quadrant of (decoder, encoder) cosine about their medians: stable (both at or
/// above), reweighted (decoder only), redirected (encoder only), rotated (neither).
fn quadrants(dec: &[f64], enc: &[f64], md: f64, me: f64) -> [usize; 4] {
    let mut q = [0usize; 4];
    for (x, y) in dec.iter().zip(enc) {
        q[match (*x >= md, *y >= me) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        }] += 1;
    }
    q
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
    consecutive(&stages, a, b, &format!("chain {chain} layer {layer} k {k}"))?;
    let rows = app
        .rows(&format!(
            "SELECT feature, dec_cos, enc_cos FROM {} WHERE chain = '{chain}' AND layer = {layer} \
             AND k = {k} AND stage_from = '{a}' AND stage_to = '{b}' ORDER BY feature",
            drift_source(app)?
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
    let quadrants = quadrants(&dec, &enc, md, me);
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
    // A token matches by the text a person reads, with or without its leading space; lakes
    // written before `vocab.text` match the byte-level symbol (`Ġ` spells the space).
    let lit = |t: &str| t.replace('\'', "''");
    let word = lit(text.trim());
    let spaced = lit(&format!("Ġ{}", text.trim_start()));
    let rows = app
        .rows(&format!(
            "SELECT t.chain, t.stage, t.layer, t.k, t.feature, count(*) AS hits, max(t.value) AS best \
             FROM top_examples t JOIN vocab v ON v.chain = t.chain AND v.stage = t.stage AND v.token_id = t.token_id \
             WHERE (trim(v.text) = '{word}' OR (v.text IS NULL AND (v.token = '{}' OR v.token = '{spaced}'))) \
             AND (t.split = 'val' OR t.split IS NULL) \
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

/// The SQL box's answer: the rows kept (at most `--sql-rows`) and how many there were.
pub(super) struct SqlResult {
    pub q: String,
    pub batches: Vec<arrow::array::RecordBatch>,
    pub total: usize,
}

/// The SQL box: one read-only statement within the row and time limits.
pub(super) async fn sql_batches(app: &App, q: &str) -> Result<SqlResult, Failure> {
    let q = q.trim();
    if let Err(e) = crate::sql::exec::read_only_statement(q) {
        let text = crate::error_text(&e);
        return Err(Failure::BadRequest(
            match text.contains(crate::sql::exec::READ_ONLY) {
                true => format!("the SQL box is {text}"),
                false => text.replace(
                    "one statement at a time",
                    "the SQL box runs one statement at a time",
                ),
            },
        ));
    }
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
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut kept = Vec::new();
    let mut left = app.cfg.sql_rows;
    for b in &batches {
        if left == 0 {
            break;
        }
        let n = b.num_rows().min(left);
        kept.push(b.slice(0, n));
        left -= n;
    }
    Ok(SqlResult {
        q: q.to_string(),
        batches: kept,
        total,
    })
}

/// The SQL box as JSON (an empty form without a statement).
pub(super) async fn sql_box(app: &App, q: Option<&str>) -> Result<Value, Failure> {
    let Some(q) = q.map(str::trim).filter(|q| !q.is_empty()) else {
        return Ok(json!({ "q": "", "columns": [], "rows": [] }));
    };
    let r = sql_batches(app, q).await?;
    let limit = app.cfg.sql_rows;
    Ok(json!({
        "q": r.q, "columns": crate::sql::format::column_names(&r.batches),
        "rows": batches_to_rows(&r.batches)?, "total_rows": r.total, "truncated": r.total > limit,
        "row_limit": limit,
    }))
}

/// The SQL box's rows as CSV with a header (the same rows the table shows).
pub(super) async fn sql_csv(app: &App, q: &str) -> Result<Vec<u8>, Failure> {
    let r = sql_batches(app, q).await?;
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(Vec::new());
    for b in &r.batches {
        w.write(b).map_err(|e| Failure::Internal(e.into()))?;
    }
    Ok(w.into_inner())
}

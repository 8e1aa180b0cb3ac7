//! The pages, rendered from the same JSON the `/api` twins return. Every string from the lake
//! goes through `esc`: prompt text and tokens are data, never markup. No script is needed.

use std::fmt::Write as _;

use serde_json::Value;

/// HTML-escapes text (element content and quoted attribute values).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => esc(s),
        Value::Null => "–".into(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => num(x),
            _ => n.to_string(),
        },
        other => esc(&other.to_string()),
    }
}

/// A number as a person reads it: four significant digits.
fn num(x: f64) -> String {
    crate::sql::format::significant(x, 4)
}

fn opt(v: &Value) -> String {
    v.as_f64().map_or("–".into(), num)
}

const STYLE: &str = r#"
:root { --ink:#1d2330; --muted:#6b7280; --line:#e5e7eb; --accent:#2563eb; --warm:#ea580c; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 0; background: #f8fafc; }
header { background: #111827; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: center; }
header a { color: #e5e7eb; text-decoration: none; } header a:hover { color: #fff; }
header .brand { font-weight: 700; letter-spacing: .02em; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 24px 0 8px; }
.muted, .note { color: var(--muted); } .note { font-size: 13px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 14px; align-items: start; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; overflow-x: auto; }
.card h3 { margin: 0 0 6px; font-size: 15px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
td, th { padding: 3px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { color: var(--muted); font-weight: 600; } td:first-child, th:first-child { text-align: left; }
a { color: var(--accent); }
.ctx { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; white-space: pre-wrap; line-height: 1.9; }
.ctx span { border-radius: 3px; padding: 1px 0; } .ctx .peak { outline: 1.5px solid var(--warm); }
.ex { border-bottom: 1px dashed var(--line); padding: 4px 0; } .ex .v { color: var(--muted); font-size: 12px; margin-right: 8px; }
.stage { margin-bottom: 18px; border-top: 1px solid var(--line); }
.cols { display: grid; grid-template-columns: minmax(0, 3fr) minmax(300px, 2fr); gap: 16px; align-items: start; }
.cols .card { margin-bottom: 10px; } .pair { display: flex; gap: 12px; } details { margin: 4px 0; } summary { cursor: pointer; color: var(--muted); }
.new { color: #15803d; } .tok { font-family: ui-monospace, monospace; background: #f1f5f9; border-radius: 3px; padding: 0 3px; white-space: pre; } .pill { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; }
.alive { background: #dcfce7; color: #166534; } .dead { background: #fee2e2; color: #991b1b; }
.err { color: #991b1b; } form.sql textarea { width: 100%; height: 90px; font-family: ui-monospace, monospace; }
svg text { font-size: 10px; fill: var(--muted); }
"#;

fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{t} · saerl</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body><header><a class="brand" href="/">saerl</a><a href="/">Study</a><a href="/search">Search</a><a href="/sql">SQL</a></header>
<main>{body}</main></body></html>"#,
        t = esc(title)
    )
}

pub fn error_page(status: u16, message: &str) -> String {
    page(
        &format!("{status}"),
        &format!(
            "<h1>{status}</h1><p class=err>{}</p><p><a href=\"/\">Back to the study</a></p>",
            esc(message)
        ),
    )
}

/// Bars of a histogram, `w` × `h` pixels.
fn bars(counts: &[Value], w: f64, h: f64, colour: &str) -> String {
    let n = counts.len().max(1) as f64;
    let max = counts.iter().filter_map(Value::as_f64).fold(1.0, f64::max);
    let mut s = format!(r#"<svg width="{w}" height="{h}" role="img">"#);
    for (i, c) in counts.iter().enumerate() {
        let v = c.as_f64().unwrap_or(0.0);
        let bh = (h - 14.0) * v / max;
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{colour}"><title>{v}</title></rect>"#,
            i as f64 * w / n,
            h - 14.0 - bh,
            (w / n - 1.0).max(1.0)
        );
    }
    s.push_str("</svg>");
    s
}

/// A line through `values` (None gaps), with the first and last value labelled.
fn sparkline(values: &[Option<f64>], w: f64, h: f64) -> String {
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    if known.is_empty() {
        return "<span class=muted>–</span>".into();
    }
    let (lo, hi) = known
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let n = (values.len().max(2) - 1) as f64;
    let pts: Vec<String> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v.map(|v| {
                format!(
                    "{:.1},{:.1}",
                    4.0 + i as f64 * (w - 8.0) / n,
                    h - 4.0 - (v - lo) / span * (h - 8.0)
                )
            })
        })
        .collect();
    let first = values.iter().flatten().next().copied().unwrap_or(lo);
    let last = values.iter().flatten().last().copied().unwrap_or(hi);
    format!(
        r#"<svg width="{w}" height="{}"><polyline fill="none" stroke="var(--accent)" stroke-width="1.6" points="{}"/><text x="2" y="{}">{}</text><text x="{}" y="{}" text-anchor="end">{}</text></svg>"#,
        h + 12.0,
        pts.join(" "),
        h + 10.0,
        num(first),
        w - 2.0,
        h + 10.0,
        num(last)
    )
}

fn link_feature(chain: &str, layer: &Value, k: &Value, f: &Value) -> String {
    format!(
        r#"<a href="/chain/{}/layer/{}/k/{}/feature/{}">{}</a>"#,
        esc(chain),
        layer,
        k,
        f,
        f
    )
}

pub fn study(v: &Value) -> String {
    let mut b = format!(
        "<h1>The study</h1><p class=muted>Lake {} — every chain × layer × k: SAE quality, effective feature count and lifecycle per stage, decoder drift per transition.</p>",
        text(&v["lake"])
    );
    if let Some(m) = v["missing"].as_array().filter(|m| !m.is_empty()) {
        b.push_str("<p class=note>Not in this lake yet: ");
        let items: Vec<String> = m
            .iter()
            .map(|x| {
                format!(
                    "<code>{}</code> (<code>{}</code>)",
                    text(&x["table"]),
                    text(&x["command"])
                )
            })
            .collect();
        b.push_str(&items.join(", "));
        b.push_str("</p>");
    }
    b.push_str("<div class=grid>");
    for g in v["groups"].as_array().into_iter().flatten() {
        let chain = g["chain"].as_str().unwrap_or("");
        let stages = g["stages"].as_array().cloned().unwrap_or_default();
        let eff: Vec<Option<f64>> = stages
            .iter()
            .map(|s| s["effective_count"].as_f64())
            .collect();
        let _ = write!(
            b,
            "<div class=card><h3>{} · layer {} · k {}</h3><div class=note>effective count {}</div><table><tr><th>stage</th><th>step</th><th>NMSE</th><th>frac_rec</th><th>L0</th><th>eff. count</th></tr>",
            esc(chain),
            g["layer"],
            g["k"],
            sparkline(&eff, 160.0, 28.0)
        );
        for s in &stages {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&s["stage"]),
                s["step"],
                opt(&s["nmse"]),
                opt(&s["frac_rec"]),
                opt(&s["mean_l0"]),
                opt(&s["effective_count"])
            );
        }
        b.push_str("</table><table><tr><th>transition</th><th>dec cos</th><th>alive</th><th>born</th><th>died</th></tr>");
        for t in g["transitions"].as_array().into_iter().flatten() {
            let _ = write!(
                b,
                r#"<tr><td><a href="/chain/{}/layer/{}/k/{}/transition/{}/{}">{} → {}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(chain),
                g["layer"],
                g["k"],
                esc(t["stage_from"].as_str().unwrap_or("")),
                esc(t["stage_to"].as_str().unwrap_or("")),
                text(&t["stage_from"]),
                text(&t["stage_to"]),
                opt(&t["dec_cos_mean"]),
                text(&t["alive"]),
                text(&t["born"]),
                text(&t["died"])
            );
        }
        b.push_str("</table></div>");
    }
    b.push_str("</div>");
    page("Study", &b)
}

fn scatter(points: &[Value], md: f64, me: f64, lo: f64) -> String {
    let (w, h) = (360.0, 300.0);
    let x = |v: f64| 30.0 + (v - lo) / (1.0 - lo) * (w - 40.0);
    let y = |v: f64| h - 24.0 - (v - lo) / (1.0 - lo) * (h - 34.0);
    let mut s = format!(
        r#"<svg width="{w}" height="{h}" role="img"><rect x="30" y="10" width="{}" height="{}" fill="none" stroke="silver"/>"#,
        w - 40.0,
        h - 34.0
    );
    for p in points {
        if let (Some(a), Some(b)) = (p[0].as_f64(), p[1].as_f64()) {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="rgba(37,99,235,.45)"/>"#,
                x(a),
                y(b)
            );
        }
    }
    let _ = write!(
        s,
        r#"<line x1="{0:.1}" x2="{0:.1}" y1="10" y2="{1:.1}" stroke="var(--warm)" stroke-dasharray="4 3"/><line x1="30" x2="{2:.1}" y1="{3:.1}" y2="{3:.1}" stroke="var(--warm)" stroke-dasharray="4 3"/>"#,
        x(md),
        h - 24.0,
        w - 10.0,
        y(me)
    );
    let _ = write!(
        s,
        r#"<text x="{:.0}" y="{:.0}">decoder cosine →</text><text x="2" y="20">enc ↑</text><text x="30" y="{:.0}">{}</text><text x="{:.0}" y="{:.0}">1</text></svg>"#,
        w / 2.0 - 30.0,
        h - 4.0,
        h - 12.0,
        num(lo),
        w - 16.0,
        h - 12.0
    );
    s
}

pub fn transition(v: &Value) -> String {
    let chain = v["chain"].as_str().unwrap_or("");
    let (l, k) = (&v["layer"], &v["k"]);
    let mut b = format!(
        "<h1>{} → {}</h1><p class=muted>chain {} · layer {} · k {} · {} features · median decoder cosine {} · median encoder cosine {}</p>",
        text(&v["stage_from"]),
        text(&v["stage_to"]),
        esc(chain),
        l,
        k,
        v["n_features"],
        opt(&v["dec_cos_median"]),
        opt(&v["enc_cos_median"])
    );
    let h = &v["histogram"];
    let empty = Vec::new();
    let _ = write!(
        b,
        "<div class=grid><div class=card><h3>Decoder cosine</h3>{}<div class=note>{} … 1, {} bins</div></div><div class=card><h3>Encoder cosine</h3>{}<div class=note>{} … 1</div></div>",
        bars(h["dec_cos"].as_array().unwrap_or(&empty), 340.0, 120.0, "#2563eb"),
        opt(&h["lo"]),
        h["dec_cos"].as_array().map_or(0, Vec::len),
        bars(h["enc_cos"].as_array().unwrap_or(&empty), 340.0, 120.0, "#0d9488"),
        opt(&h["lo"])
    );
    let q = &v["quadrants"];
    let _ = write!(
        b,
        "<div class=card><h3>Encoder × decoder (median quadrants)</h3>{}<table><tr><th>stable</th><th>reweighted</th><th>redirected</th><th>rotated</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table><div class=note>high = at or above the median; reweighted = high decoder, low encoder cosine.</div></div></div>",
        scatter(
            v["points"].as_array().unwrap_or(&empty),
            v["dec_cos_median"].as_f64().unwrap_or(0.0),
            v["enc_cos_median"].as_f64().unwrap_or(0.0),
            h["lo"].as_f64().unwrap_or(0.0)
        ),
        q["stable"],
        q["reweighted"],
        q["redirected"],
        q["rotated"]
    );
    b.push_str("<h2>Most-drifted features</h2><table><tr><th>feature</th><th>dec cos</th><th>enc cos</th></tr>");
    for d in v["most_drifted"].as_array().into_iter().flatten() {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            link_feature(chain, l, k, &d["feature"]),
            opt(&d["dec_cos"]),
            opt(&d["enc_cos"])
        );
    }
    b.push_str("</table>");
    if v["has_stats"].as_bool() != Some(true) {
        b.push_str("<p class=note>Births and deaths need feature statistics: run <code>saerl stats</code> for this chain.</p>");
    }
    for (what, key) in [("Born", "born"), ("Died", "died")] {
        let list: Vec<String> = v[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| link_feature(chain, l, k, f))
            .collect();
        let _ = write!(
            b,
            "<h2>{what} ({})</h2><p>{}</p>",
            list.len(),
            if list.is_empty() {
                "none".into()
            } else {
                list.join(" ")
            }
        );
    }
    page("Transition", &b)
}

fn tint(a: f64, max: f64) -> String {
    let t = if max > 0.0 {
        (a / max).clamp(0.0, 1.0)
    } else {
        0.0
    };
    format!("rgba(234,88,12,{:.2})", t * 0.85)
}

/// One example in context: each token tinted by this feature's activation there.
fn example_html(b: &mut String, e: &Value) {
    let ctx = e["context"].as_array().cloned().unwrap_or_default();
    let max = ctx
        .iter()
        .filter_map(|t| t["activation"].as_f64())
        .fold(0.0, f64::max);
    let _ = write!(
        b,
        "<div class=ex><span class=v>#{} · {} · doc {}</span><span class=ctx>",
        e["rank"],
        opt(&e["value"]),
        e["doc_id"]
    );
    for t in &ctx {
        let a = t["activation"].as_f64().unwrap_or(0.0);
        let _ = write!(
            b,
            r#"<span{} style="background:{}" title="{}">{}</span>"#,
            if t["peak"].as_bool() == Some(true) {
                " class=peak"
            } else {
                ""
            },
            tint(a, max),
            num(a),
            text(&t["text"])
        );
    }
    b.push_str("</span></div>");
}

/// A stage's logit effects: raised and lowered tokens, those new since the previous stage marked.
fn logits_html(b: &mut String, lg: &Value) {
    if lg.is_null() {
        return;
    }
    let entered: Vec<&str> = lg["entered"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let list = |dir: &str| -> String {
        lg[dir]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let new = dir == "top" && t["text"].as_str().is_some_and(|x| entered.contains(&x));
                format!(
                    "<tr><td>{}<span class=tok>{}</span></td><td>{}</td></tr>",
                    if new {
                        "<b class=new title=\"entered the list at this stage\">+</b> "
                    } else {
                        ""
                    },
                    text(&t["text"]),
                    opt(&t["value"])
                )
            })
            .collect()
    };
    let left: Vec<String> = lg["left"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| format!("<span class=tok>{}</span>", text(t)))
        .collect();
    let _ = write!(
        b,
        "<div class=card><h3>Logit effects</h3><p class=note>unembedding · (final norm weight ⊙ decoder direction){}</p>\
         <div class=pair><table><tr><th>raises</th><th></th></tr>{}</table><table><tr><th>lowers</th><th></th></tr>{}</table></div>{}</div>",
        if lg["norm_folded"] == true { "; the norm weight is folded in. <b class=new>+</b> entered the list since the previous stage" } else { "" },
        list("top"),
        list("bottom"),
        if left.is_empty() { String::new() } else { format!("<p class=note>left the top list: {}</p>", left.join(" ")) }
    );
}

/// A stage's top examples, then its quantile intervals' examples folded (the highest first).
fn examples_column_html(b: &mut String, s: &Value) {
    let examples = s["top_examples"].as_array().cloned().unwrap_or_default();
    b.push_str("<h3>Top activations</h3>");
    if examples.is_empty() {
        b.push_str("<p class=note>No top examples at this stage on this split (the feature never fired, or the lake has no statistics).</p>");
    }
    for e in &examples {
        example_html(b, e);
    }
    for q in s["quantile_examples"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
    {
        let _ = write!(
            b,
            "<details><summary>Interval {} – {} <span class=muted>({} shown)</span></summary>",
            opt(&q["lo"]),
            opt(&q["hi"]),
            q["examples"].as_array().map_or(0, Vec::len)
        );
        for e in q["examples"].as_array().into_iter().flatten() {
            example_html(b, e);
        }
        b.push_str("</details>");
    }
}

/// One stage of the feature page: examples in context beside the histogram, logits and neighbours.
fn stage_html(b: &mut String, s: &Value, chain: &str, l: &Value, k: &Value) {
    let _ = write!(
        b,
        "<section class=stage id=\"stage-{st}\"><h2>{st} <span class=muted>(step {})</span></h2><div class=cols><div>",
        s["step"],
        st = text(&s["stage"])
    );
    examples_column_html(b, s);
    b.push_str("</div><div>");
    if let Some(h) = s["histogram"].as_object() {
        let counts = h
            .get("counts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let _ = write!(
            b,
            "<div class=card><h3>Activation histogram</h3>{}<p class=note>{} non-zero activations, 0 to {}</p></div>",
            bars(&counts, 300.0, 80.0, "var(--warm)"),
            h.get("n_nonzero").map_or("–".into(), text),
            h.get("hi").map_or("–".into(), opt)
        );
    }
    logits_html(b, &s["logits"]);
    let links = |key: &str, f: &dyn Fn(&Value) -> String| -> String {
        s[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(f)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let nearest = links("nearest", &|n| {
        format!(
            "{} ({})",
            link_feature(chain, l, k, &n["feature"]),
            opt(&n["dec_cos"])
        )
    });
    let partners = links("partners", &|p| {
        format!(
            "{} {} {}",
            text(&p["chain"]),
            link_feature(p["chain"].as_str().unwrap_or(""), l, k, &p["feature"]),
            format_args!("(at {}, cos {})", text(&p["stage"]), opt(&p["dec_cos"]))
        )
    });
    let _ = write!(
        b,
        "<div class=card><h3>Neighbours</h3><p class=note>Nearest in this SAE (decoder cosine): {}</p><p class=note>Partner in other chains (match_features): {}</p></div>",
        if nearest.is_empty() { "–".into() } else { nearest },
        if partners.is_empty() { "–".into() } else { partners }
    );
    b.push_str("</div></div></section>");
}

pub fn feature(v: &Value) -> String {
    let chain = v["chain"].as_str().unwrap_or("");
    let (l, k, f) = (&v["layer"], &v["k"], &v["feature"]);
    let stages = v["stages"].as_array().cloned().unwrap_or_default();
    let mut b = format!(
        "<h1>Feature {f}</h1><p class=muted>chain {} · layer {l} · k {k} · {} stages · examples from the {} split (<a href=\"?split={}\">show {}</a>)</p>",
        esc(chain),
        stages.len(),
        text(&v["split"]),
        if v["split"] == "val" { "train" } else { "val" },
        if v["split"] == "val" { "train" } else { "val" }
    );
    let col = |key: &str| -> Vec<Option<f64>> { stages.iter().map(|s| s[key].as_f64()).collect() };
    let _ = write!(
        b,
        "<div class=grid><div class=card><h3>Density along the chain</h3>{}</div><div class=card><h3>Decoder cosine to the first stage</h3>{}</div></div>",
        sparkline(&col("density"), 340.0, 60.0),
        sparkline(&col("dec_cos_first"), 340.0, 60.0)
    );
    b.push_str("<h2>Life along the chain</h2><table><tr><th>stage</th><th>step</th><th>density</th><th></th><th>mean act</th><th>max act</th><th>dec cos prev</th><th>enc cos prev</th><th>dec cos first</th><th>enc cos first</th><th>next stage's best match</th></tr>");
    for s in &stages {
        let alive = match s["alive"].as_bool() {
            Some(true) => "<span class=\"pill alive\">alive</span>",
            Some(false) => "<span class=\"pill dead\">dead</span>",
            None => "",
        };
        let best = match &s["next_best_match"] {
            Value::Null => "–".to_string(),
            m => format!(
                "{} (dec cos {}; aligned {})",
                link_feature(chain, l, k, &m["feature"]),
                opt(&m["dec_cos"]),
                opt(&m["aligned_dec_cos"])
            ),
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{alive}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{best}</td></tr>",
            text(&s["stage"]),
            s["step"],
            opt(&s["density"]),
            opt(&s["mean_act"]),
            opt(&s["max_act"]),
            opt(&s["dec_cos_prev"]),
            opt(&s["enc_cos_prev"]),
            opt(&s["dec_cos_first"]),
            opt(&s["enc_cos_first"])
        );
    }
    b.push_str("</table>");
    for s in &stages {
        stage_html(&mut b, s, chain, l, k);
    }
    for n in v["notes"].as_array().into_iter().flatten() {
        let _ = write!(b, "<p class=note>{}</p>", text(n));
    }
    page(&format!("Feature {f}"), &b)
}

pub fn search(v: &Value) -> String {
    let mut b =
        String::from("<h1>Search</h1><form method=get action=\"/search\"><p>Jump to a feature: ");
    b.push_str("<input name=chain placeholder=chain size=10> <input name=layer placeholder=layer size=4> <input name=k placeholder=k size=4> <input name=feature placeholder=feature size=6> <button>Go</button></p></form>");
    let _ = write!(
        b,
        "<form method=get action=\"/search\"><p>Features whose top examples contain a token: <input name=text value=\"{}\" size=16> <button>Find</button></p></form>",
        v["text"].as_str().map(esc).unwrap_or_default()
    );
    let hits = v["hits"].as_array().cloned().unwrap_or_default();
    if v["text"].is_string() {
        let _ = write!(b, "<h2>{} features</h2><table><tr><th>feature</th><th>chain</th><th>stage</th><th>layer</th><th>k</th><th>examples</th><th>best</th></tr>", hits.len());
        for h in &hits {
            let chain = h["chain"].as_str().unwrap_or("");
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                link_feature(chain, &h["layer"], &h["k"], &h["feature"]),
                esc(chain),
                text(&h["stage"]),
                h["layer"],
                h["k"],
                h["hits"],
                opt(&h["best"])
            );
        }
        b.push_str("</table>");
    }
    b.push_str("<h2>SAE groups</h2><p>");
    let groups: Vec<String> = v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            format!(
                "{} · layer {} · k {}",
                text(&g["chain"]),
                g["layer"],
                g["k"]
            )
        })
        .collect();
    b.push_str(&groups.join("<br>"));
    b.push_str("</p>");
    page("Search", &b)
}

pub fn sql(v: &Value) -> String {
    let mut b = format!(
        "<h1>SQL</h1><form class=sql method=post action=\"/sql\"><textarea name=q>{}</textarea><p><button>Run</button> <span class=note>One SELECT, WITH or EXPLAIN statement; read-only.</span></p></form>",
        v["q"].as_str().map(esc).unwrap_or_default()
    );
    let cols: Vec<String> = v["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    if !cols.is_empty() {
        if v["truncated"].as_bool() == Some(true) {
            let _ = write!(
                b,
                "<p class=note>First {} of {} rows.</p>",
                v["row_limit"], v["total_rows"]
            );
        }
        b.push_str("<table><tr>");
        for c in &cols {
            let _ = write!(b, "<th>{}</th>", esc(c));
        }
        b.push_str("</tr>");
        for r in v["rows"].as_array().into_iter().flatten() {
            b.push_str("<tr>");
            for c in &cols {
                let _ = write!(b, "<td>{}</td>", text(&r[c.as_str()]));
            }
            b.push_str("</tr>");
        }
        b.push_str("</table>");
        let q = v["q"].as_str().unwrap_or("");
        let q = esc(&url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>());
        let _ = write!(
            b,
            "<p><a href=\"/api/sql?q={q}&amp;format=csv\" download>download as CSV</a> · <a href=\"/api/sql?q={q}\">as JSON</a></p>"
        );
    }
    page("SQL", &b)
}

//! SAELens and sparsify: the SAEs saved by the libraries' own code (`interop/`) import and
//! reproduce each library's encodings through `topk_encode` (indices exact, values 1e-5) and its
//! decodes; exports re-import to the same tables; the study's SAEs exported to both formats
//! encode by the stated conventions, with what is inexact recorded; the `.pt` export has
//! PyTorch's archive layout; `match_features` is the optimal one-to-one assignment.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use saerl::lake::{Lake, PartitionKey, Table};
use saerl::rng::SplitMix64;
use saerl::sae::interop::NOTES_FILE;
use saerl::sae::zip_store::ZipStore;
use saerl::sae::Sae;
use saerl::sql::blocking::run_sql;
use saerl::tables::read_sae;
use serde_json::Value;

use crate::common::*;

fn interop() -> PathBuf {
    fixtures().join("interop")
}

/// The layer a fixture SAE hooks (SAELens records `blocks.N.hook_...`), else 0.
fn fixture_layer(e: &Value) -> i64 {
    e["saelens"]["cfg"]["metadata"]["hook_name"]
        .as_str()
        .and_then(|h| h.split('.').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The library's sparse outputs of each probe row where the value is positive, largest first.
fn expected_sparse(e: &Value, idx: &str, val: &str) -> Vec<Vec<(i32, f32)>> {
    let rows = e[idx].as_array().unwrap();
    rows.iter()
        .zip(e[val].as_array().unwrap())
        .map(|(i, v)| {
            let mut r: Vec<(i32, f32)> = i
                .as_array()
                .unwrap()
                .iter()
                .zip(v.as_array().unwrap())
                .map(|(i, v)| (i.as_i64().unwrap() as i32, v.as_f64().unwrap() as f32))
                .filter(|&(_, v)| v > 0.0)
                .collect();
            r.sort_by(|a, b| b.1.total_cmp(&a.1));
            r
        })
        .collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn the_libraries_own_saes_reproduce_their_encodings_and_decodes() {
    let e = json(&interop().join("expected.json"));
    let layer = fixture_layer(&e);
    let probe_file = interop().join(e["probe"]["file"].as_str().unwrap());
    for (format, idx, val) in [
        ("saelens", "encode_topk_indices", "encode_topk_values"),
        ("sparsify", "top_indices_sorted", "top_acts_sorted"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        let src = interop().join(e[format]["dir"].as_str().unwrap());
        ok(
            &lake,
            &[
                "import",
                format,
                src.to_str().unwrap(),
                "--chain",
                format,
                "--stage",
                "instruct_base",
                "--layer",
                &layer.to_string(),
            ],
        );
        let ctx = session(&lake);
        let (probe, p, d, x) = probe_table(&probe_file, e["probe"]["key"].as_str().unwrap());
        ctx.register_table("probe", Arc::new(probe)).unwrap();
        let k = e[format]["cfg"]["k"].as_i64().unwrap();
        let rows = encode_probe(&ctx, format, "instruct_base", layer, k);
        let want = expected_sparse(&e[format], idx, val);
        assert_eq!(rows.len(), p);
        let sae = read_sae(
            &Lake::open(&lake).unwrap(),
            &PartitionKey::sae(format, "instruct_base", layer as i32, k as i32),
        )
        .unwrap();
        let decode = matrix(&e[format]["decode"]);
        let (mut sse, mut sst) = (0f64, 0f64);
        for (r, (feats, vals)) in rows.iter().enumerate() {
            let got: Vec<(i32, f32)> = feats
                .iter()
                .zip(vals)
                .map(|(&i, &v)| (i, v))
                .filter(|&(_, v)| v > 0.0)
                .collect();
            assert_eq!(
                got.iter().map(|g| g.0).collect::<Vec<_>>(),
                want[r].iter().map(|w| w.0).collect::<Vec<_>>(),
                "{format} row {r}: indices"
            );
            for ((_, g), (_, w)) in got.iter().zip(&want[r]) {
                assert_close(
                    &format!("{format} row {r} value"),
                    *g as f64,
                    *w as f64,
                    1e-5,
                );
            }
            let latents: Vec<(u32, f32)> = feats
                .iter()
                .zip(vals)
                .map(|(&i, &v)| (i as u32, v))
                .collect();
            let x_hat = sae.decode(&latents);
            for (j, v) in x_hat.iter().enumerate() {
                assert_close(
                    &format!("{format} decode[{r}][{j}]"),
                    *v as f64,
                    decode[r][j],
                    1e-5,
                );
                sse += (x[r * d + j] as f64 - *v as f64).powi(2);
            }
        }
        if let Some(fvu) = e[format]["fvu"].as_f64() {
            for j in 0..d {
                let mean = (0..p).map(|r| x[r * d + j] as f64).sum::<f64>() / p as f64;
                sst += (0..p)
                    .map(|r| (x[r * d + j] as f64 - mean).powi(2))
                    .sum::<f64>();
            }
            assert_close("sparsify fvu", sse / sst, fvu, 1e-4);
        }

        // Export and re-import: the same SAE, bit for bit.
        let out = dir.path().join("out");
        ok(&lake, &["export", format, out.to_str().unwrap()]);
        let lake2 = dir.path().join("lake2");
        ok(&lake2, &["import", format, out.to_str().unwrap()]);
        let again = read_sae(
            &Lake::open(&lake2).unwrap(),
            &PartitionKey::sae(format, "instruct_base", layer as i32, k as i32),
        )
        .unwrap();
        assert_eq!(
            again,
            Sae {
                meta: again.meta.clone(),
                ..sae.clone()
            },
            "{format}: export → import changed the SAE"
        );
        // The exported files hold what the library's own files hold.
        let dir_out = std::fs::read_dir(out.join(format!("sae_{format}")))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let cfg = json(&dir_out.join("cfg.json"));
        for key in e[format]["cfg_keys"].as_array().unwrap() {
            assert!(
                cfg.get(key.as_str().unwrap()).is_some(),
                "{format}: cfg.json lacks {key}"
            );
        }
        assert!(
            !dir_out.join(NOTES_FILE).exists(),
            "{format}: an exact export needs no notes"
        );
    }
}

/// The study's SAEs (`topk`, separate b_pre) exported to both formats: the bias folds exactly
/// (pre-activations agree to float rounding) and the ReLU difference is recorded, not hidden.
#[test]
fn study_saes_export_to_both_formats_by_the_stated_conventions() {
    let (dir, lake) = imported_lake();
    let l = Lake::open(&lake).unwrap();
    let (key, _) = l.partitions(Table::Saes).unwrap().remove(0);
    let study = read_sae(&l, &key).unwrap();
    let mut rng = SplitMix64::new(3);
    let rows: Vec<Vec<f32>> = (0..16)
        .map(|_| {
            (0..study.d_model)
                .map(|_| (rng.next_u64() % 2000) as f32 / 1000.0 - 1.0)
                .collect()
        })
        .collect();
    for format in ["saelens", "sparsify"] {
        let out = dir.path().join(format);
        let o = saerl(
            &lake,
            &[
                "export",
                format,
                out.to_str().unwrap(),
                "--chain",
                &key.chain,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("ReLU"),
            "{format}: the export must say what changes:\n{}",
            stderr(&o)
        );
        let lake2 = dir.path().join(format!("{format}-lake"));
        ok(&lake2, &["import", format, out.to_str().unwrap()]);
        let back = read_sae(&Lake::open(&lake2).unwrap(), &key).unwrap();
        let sae_dir = find(
            &out,
            &format!(
                "sae_{}_layer{}",
                key.stage.as_deref().unwrap(),
                key.layer.unwrap()
            ),
        );
        let notes = json(&sae_dir.join(NOTES_FILE));
        assert_eq!(notes["activation"], "topk");
        for x in &rows {
            // Pre-activations W_enc (x − b_pre) + b_enc under either bias layout.
            let pre = |s: &Sae| -> Vec<f64> {
                let mut z = Vec::new();
                s.pre_activations(x, &mut z);
                z.iter()
                    .zip(&s.b_enc)
                    .map(|(&a, &b)| a as f64 + b as f64)
                    .collect()
            };
            let (a, b) = (pre(&study), pre(&back));
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert_close(
                    &format!("{format} pre-activation {i}"),
                    *v,
                    *u,
                    1e-4 * (1.0 + u.abs()),
                );
            }
            // The latents: the study's top-k with negative values read as 0 by the libraries.
            let mut want: Vec<(u32, f32)> =
                study.encode(x).into_iter().filter(|l| l.1 > 0.0).collect();
            let mut got: Vec<(u32, f32)> =
                back.encode(x).into_iter().filter(|l| l.1 > 0.0).collect();
            want.sort_by_key(|l| l.0);
            got.sort_by_key(|l| l.0);
            assert_eq!(
                got.iter().map(|l| l.0).collect::<Vec<_>>(),
                want.iter().map(|l| l.0).collect::<Vec<_>>()
            );
        }
    }
}

/// The file or directory called `name` under `root`.
fn find(root: &Path, name: &str) -> PathBuf {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() == name {
                return p;
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    panic!("{name} not under {}", root.display())
}

/// saerl's `.pt` export has the archive layout PyTorch writes (the fixture's files are
/// PyTorch-written): the same entry names in the same order, `version`, `byteorder`, and each
/// storage's data 64-byte aligned, so `torch.load(weights_only=True)` reads it.
#[test]
fn pt_export_follows_pytorchs_archive_layout() {
    let (dir, lake) = imported_lake();
    let out = dir.path().join("pt");
    ok(&lake, &["export", "pt", out.to_str().unwrap()]);
    let f = &pt_files()[0];
    let theirs = std::fs::read(fixtures().join("sae-pt").join(&f.rel)).unwrap();
    let ours_path = find(
        &out,
        Path::new(&f.rel).file_name().unwrap().to_str().unwrap(),
    );
    let ours = std::fs::read(ours_path).unwrap();
    let layout = |bytes: &[u8]| -> Vec<String> {
        let z = ZipStore::parse(bytes.to_vec()).unwrap();
        z.names()
            .map(|n| n.split_once('/').map_or(n, |(_, rest)| rest).to_string())
            .collect()
    };
    let (a, b) = (layout(&theirs), layout(&ours));
    let norm = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|n| !n.starts_with(".data/"))
            .map(|n| {
                if n.starts_with("data/") {
                    "data/N".into()
                } else {
                    n.clone()
                }
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    assert_eq!(norm(&b), norm(&a), "entry names");
    let z = ZipStore::parse(ours).unwrap();
    for n in z.names().filter(|n| n.contains("/data/")) {
        let at = z.offset(n).unwrap();
        assert_eq!(at % 64, 0, "{n}: storage data at byte {at}, not 64-aligned");
    }
    let zt = ZipStore::parse(theirs).unwrap();
    for n in [
        "version",
        "byteorder",
        ".format_version",
        ".storage_alignment",
    ] {
        let get = |z: &ZipStore| {
            z.names()
                .find(|x| x.ends_with(&format!("/{n}")))
                .map(|x| z.get(x).unwrap().to_vec())
        };
        assert_eq!(get(&z), get(&zt), "{n}");
    }
}

/// The assignment maximises the summed cosine: against every permutation on small random SAEs.
#[test]
fn match_features_is_the_optimal_assignment() {
    let mut rng = SplitMix64::new(11);
    for (n, d) in [(5usize, 3usize), (7, 4), (6, 6)] {
        let mut draw = || {
            (0..n * d)
                .map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0)
                .collect::<Vec<f32>>()
        };
        let (a, b) = (draw(), draw());
        let unit = |v: &[f32], i: usize| {
            let r = &v[i * d..(i + 1) * d];
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter().map(|x| x / norm).collect::<Vec<f32>>()
        };
        let cos = |i: usize, j: usize| -> f64 {
            unit(&a, i)
                .iter()
                .zip(unit(&b, j))
                .map(|(x, y)| (*x * y) as f64)
                .sum()
        };
        // Heap's algorithm over all n! permutations.
        let mut perm: Vec<usize> = (0..n).collect();
        let mut best = f64::NEG_INFINITY;
        let mut c = vec![0; n];
        let total = |p: &[usize]| (0..n).map(|i| cos(i, p[i])).sum::<f64>();
        best = best.max(total(&perm));
        let mut i = 0;
        while i < n {
            if c[i] < i {
                if i % 2 == 0 {
                    perm.swap(0, i)
                } else {
                    perm.swap(c[i], i)
                }
                best = best.max(total(&perm));
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        let m = saerl::sql::matching::assignment(&a, &b, d).unwrap();
        assert_eq!(m.len(), n);
        let mut seen = vec![false; n];
        for &(i, j, c) in &m {
            assert!(!seen[j], "column {j} used twice");
            seen[j] = true;
            assert_close("reported cosine", c as f64, cos(i, j), 1e-5);
        }
        let got: f64 = m.iter().map(|&(i, j, _)| cos(i, j)).sum();
        assert_close(&format!("n={n}: total cosine"), got, best, 1e-5);
    }
}

/// Consecutive stages of one chain are warm-started, so the optimal matching is index to index;
/// `matching.sql` runs and reports PW-MCC in [−1, 1].
#[test]
fn consecutive_stages_match_index_to_index() {
    let (_dir, lake) = imported_lake();
    let ctx = session(&lake);
    let e = json(&fixtures().join("sae-pt/expected.json"));
    let t = &e["transitions"][0];
    let (chain, layer, k) = (
        t["chain"].as_str().unwrap(),
        t["layer"].as_i64().unwrap(),
        t["k"].as_i64().unwrap(),
    );
    let (from, to) = (t["from"].as_str().unwrap(), t["to"].as_str().unwrap());
    let sql = format!(
        "SELECT count(*) AS n, sum(CASE WHEN feature_a = feature_b THEN 1 ELSE 0 END) AS same \
         FROM match_features('{chain}', '{from}', '{chain}', '{to}', {layer}, {k})"
    );
    let b = run_sql(&ctx, &sql).unwrap();
    let csv = format!("{:?}", b);
    let n = b[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    let same = b[0]
        .column(1)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(
        n as usize,
        t["decoder_cos"].as_array().unwrap().len(),
        "{csv}"
    );
    assert_eq!(
        same, n,
        "{chain} {from}→{to} layer {layer}: not index to index"
    );
    let m = saerl::sql::saved::QUERIES
        .iter()
        .find(|q| q.0 == "matching")
        .unwrap()
        .1;
    let r = run_sql(&ctx, m).unwrap();
    assert!(
        r.iter().map(|b| b.num_rows()).sum::<usize>() > 0,
        "matching.sql gave no rows"
    );
}

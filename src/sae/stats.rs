//! Per-feature statistics of an SAE over activation rows (DESIGN.md, "Statistics"), accumulated
//! a batch at a time so memory does not grow with the number of rows:
//! - fire_count: rows with z_i > 0 after top-k (density = fire_count / n_tokens, the study's);
//! - topk_count: rows with z_i ≠ 0 (selected by top-k, the training-time notion);
//! - mean_act: mean z_i over the rows where it fired (z_i > 0); max_act: the largest z_i selected;
//! - the top examples: per split, the `TOP_EXAMPLES` rows with the largest selected z_i (ties:
//!   earlier row), so a feature dead on val shows no train examples as its own.

pub const TOP_EXAMPLES: usize = 20;

/// Counts for one split.
#[derive(Clone)]
pub struct SplitStats {
    pub n_tokens: u64,
    pub fire_count: Vec<u64>,
    pub topk_count: Vec<u64>,
    /// Σ z_i over fired rows.
    pub fire_sum: Vec<f64>,
    /// Largest selected z_i (None: never selected).
    pub max_act: Vec<Option<f32>>,
    /// Per feature, up to TOP_EXAMPLES examples, best first once `finish`ed.
    pub top: Vec<Vec<Example>>,
    /// Per feature, the smallest value kept while its list is full.
    floor: Vec<f32>,
}

impl SplitStats {
    fn new(n: usize) -> Self {
        Self {
            n_tokens: 0,
            fire_count: vec![0; n],
            topk_count: vec![0; n],
            fire_sum: vec![0.0; n],
            max_act: vec![None; n],
            top: vec![Vec::new(); n],
            floor: vec![f32::NEG_INFINITY; n],
        }
    }

    pub fn density(&self, i: usize) -> f64 {
        if self.n_tokens == 0 {
            0.0
        } else {
            self.fire_count[i] as f64 / self.n_tokens as f64
        }
    }

    pub fn mean_act(&self, i: usize) -> Option<f64> {
        (self.fire_count[i] > 0).then(|| self.fire_sum[i] / self.fire_count[i] as f64)
    }
}

/// Where a top example came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Example {
    pub value: f32,
    pub doc_id: i64,
    pub pos: i32,
    pub token_id: i32,
}

pub struct FeatureStats {
    pub train: SplitStats,
    pub val: SplitStats,
}

/// The provenance of each row of a batch.
pub struct RowInfo<'a> {
    pub doc_id: &'a [i64],
    pub pos: &'a [i32],
    pub token_id: &'a [i32],
    pub val: &'a [bool],
}

impl FeatureStats {
    pub fn new(d_sae: usize) -> Self {
        Self {
            train: SplitStats::new(d_sae),
            val: SplitStats::new(d_sae),
        }
    }

    /// Both splits by name, train first (the order tables list them in).
    pub fn splits(&self) -> [(&'static str, &SplitStats); 2] {
        [("train", &self.train), ("val", &self.val)]
    }

    /// Adds rows by their active latents (one list per row, as `BatchEncoder::latents` gives).
    pub fn add(&mut self, latents: &[Vec<(u32, f32)>], info: &RowInfo) {
        for (r, lat) in latents.iter().enumerate() {
            let s = if info.val[r] {
                &mut self.val
            } else {
                &mut self.train
            };
            s.n_tokens += 1;
            for &(i, v) in lat {
                let i = i as usize;
                if v != 0.0 {
                    s.topk_count[i] += 1;
                }
                if v > 0.0 {
                    s.fire_count[i] += 1;
                    s.fire_sum[i] += v as f64;
                }
                s.max_act[i] = Some(s.max_act[i].map_or(v, |m| m.max(v)));
                if v > s.floor[i] || s.top[i].len() < TOP_EXAMPLES {
                    keep(
                        &mut s.top[i],
                        &mut s.floor[i],
                        Example {
                            value: v,
                            doc_id: info.doc_id[r],
                            pos: info.pos[r],
                            token_id: info.token_id[r],
                        },
                    );
                }
            }
        }
    }

    /// Sorts every feature's examples, best first (ties keep arrival order).
    pub fn finish(mut self) -> Self {
        for s in [&mut self.train, &mut self.val] {
            for list in &mut s.top {
                list.sort_by(|a, b| b.value.total_cmp(&a.value));
            }
        }
        self
    }
}

/// Puts `e` into a feature's list, dropping its weakest (the latest among equals) when full;
/// `floor` becomes the smallest value kept once the list is full.
fn keep(list: &mut Vec<Example>, floor: &mut f32, e: Example) {
    if list.len() == TOP_EXAMPLES {
        let weakest = (0..list.len())
            .min_by(|&a, &b| list[a].value.total_cmp(&list[b].value).then(b.cmp(&a)))
            .unwrap();
        list.remove(weakest);
    }
    list.push(e);
    if list.len() == TOP_EXAMPLES {
        *floor = list.iter().map(|e| e.value).fold(f32::INFINITY, f32::min);
    }
}

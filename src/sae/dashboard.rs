//! What a feature page shows beyond `feature_stats`, computed once by `stats` so that pages read
//! a few rows instead of activations (DESIGN.md, "Serving"):
//! - the histogram of a feature's non-zero activations (`HIST_BINS` equal bins over (0, max]);
//! - quantile examples: `QUANTILE_BINS` equal-width intervals of (0, max] (SAEDashboard's
//!   interval groups), `PER_QUANTILE` rows drawn uniformly from each (reservoir sampling, seeded);
//! - each example's context: this feature's activation at every token within `CONTEXT` of the
//!   peak, in the same prompt;
//! - logit effects: a decoder direction through the unembedding (final norm weight folded in);
//! - nearest features: the highest decoder cosines within one SAE.
//!
//! Pure computation over slices and a spill file of latents; `commands/stats.rs` feeds it.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Seek, Write};

use anyhow::{Context as _, Result};
use rayon::prelude::*;

use super::stats::Example;
use crate::kernels::{bf16, dot, for_each_cosine_row, sgemm_nt};
use crate::rng::SplitMix64;

pub const HIST_BINS: usize = 40;
pub const QUANTILE_BINS: usize = 10;
pub const PER_QUANTILE: usize = 5;
/// Tokens on each side of an example's peak.
pub const CONTEXT: i32 = 12;
/// The top examples (of `stats::TOP_EXAMPLES`) given a context.
pub const TOP_IN_CONTEXT: usize = 10;
pub const LOGITS: usize = 10;
pub const NEAREST: usize = 5;

/// The bin of `v` among `bins` equal bins of (0, hi].
fn bin_of(v: f32, hi: f32, bins: usize) -> usize {
    (((v / hi) * bins as f32) as usize).min(bins - 1)
}

/// One split's histograms and quantile samples, from each row's latents in stored order.
pub struct Spread {
    /// Per feature, the largest activation (from the first pass); ≤ 0: never fired.
    hi: Vec<f32>,
    /// feature × HIST_BINS.
    pub counts: Vec<u64>,
    /// feature × QUANTILE_BINS samples, and how many rows each bin has seen.
    samples: Vec<Vec<Example>>,
    seen: Vec<u64>,
    rng: SplitMix64,
}

impl Spread {
    pub fn new(max_act: &[Option<f32>], seed: u64) -> Self {
        let n = max_act.len();
        Self {
            hi: max_act.iter().map(|m| m.unwrap_or(0.0)).collect(),
            counts: vec![0; n * HIST_BINS],
            samples: vec![Vec::new(); n * QUANTILE_BINS],
            seen: vec![0; n * QUANTILE_BINS],
            rng: SplitMix64::new(seed),
        }
    }

    pub fn add(&mut self, feature: usize, e: Example) {
        let hi = self.hi[feature];
        if e.value <= 0.0 || hi <= 0.0 {
            return;
        }
        self.counts[feature * HIST_BINS + bin_of(e.value, hi, HIST_BINS)] += 1;
        let b = feature * QUANTILE_BINS + bin_of(e.value, hi, QUANTILE_BINS);
        self.seen[b] += 1;
        if self.samples[b].len() < PER_QUANTILE {
            self.samples[b].push(e);
        } else {
            let j = self.rng.below(self.seen[b] as usize);
            if j < PER_QUANTILE {
                self.samples[b][j] = e;
            }
        }
    }

    /// The histogram's upper edge (lower edge 0), None for a feature that never fired.
    pub fn hi(&self, feature: usize) -> Option<f32> {
        (self.hi[feature] > 0.0).then_some(self.hi[feature])
    }

    pub fn histogram(&self, feature: usize) -> &[u64] {
        &self.counts[feature * HIST_BINS..(feature + 1) * HIST_BINS]
    }

    /// The samples of each quantile bin, largest value first.
    pub fn quantile_examples(&self, feature: usize) -> Vec<Vec<Example>> {
        (0..QUANTILE_BINS)
            .map(|b| {
                let mut v = self.samples[feature * QUANTILE_BINS + b].clone();
                v.sort_by(|x, y| y.value.total_cmp(&x.value));
                v
            })
            .collect()
    }
}

/// Every row's active latents, in stored order, in an anonymous temporary file: the later passes
/// read them back instead of encoding the activations again.
pub struct LatentSpill {
    file: BufWriter<std::fs::File>,
    rows: usize,
}

impl LatentSpill {
    pub fn new() -> Result<Self> {
        let file = tempfile::tempfile().context(
            "creating a temporary file for the latents (set TMPDIR to a directory with room)",
        )?;
        Ok(Self {
            file: BufWriter::with_capacity(1 << 20, file),
            rows: 0,
        })
    }

    pub fn push(&mut self, latents: &[(u32, f32)]) -> Result<()> {
        self.file.write_all(&(latents.len() as u32).to_le_bytes())?;
        for (i, v) in latents {
            self.file.write_all(&i.to_le_bytes())?;
            self.file.write_all(&v.to_le_bytes())?;
        }
        self.rows += 1;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Calls `f(row, latents)` for every row pushed, in order.
    pub fn for_each(&mut self, f: &mut dyn FnMut(usize, &[Latent])) -> Result<()> {
        self.file.flush()?;
        let file = self.file.get_mut();
        file.rewind()?;
        let mut r = BufReader::with_capacity(1 << 20, &*file);
        let mut buf = Vec::new();
        let mut word = [0u8; 4];
        for row in 0..self.rows {
            r.read_exact(&mut word)
                .context("reading the latents back")?;
            let n = u32::from_le_bytes(word) as usize;
            let mut raw = vec![0u8; n * 8];
            r.read_exact(&mut raw).context("reading the latents back")?;
            buf.clear();
            buf.extend(raw.chunks_exact(8).map(|c| {
                (
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    f32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            }));
            f(row, &buf);
        }
        drop(r);
        self.file.get_mut().seek(std::io::SeekFrom::End(0))?;
        Ok(())
    }
}

/// Where each activation row is: (doc_id, pos) → row number, and each row's provenance.
#[derive(Default)]
pub struct RowIndex {
    rows: HashMap<(i64, i32), u32>,
    pub doc_id: Vec<i64>,
    pub pos: Vec<i32>,
    pub tokens: Vec<i32>,
    pub val: Vec<bool>,
}

impl RowIndex {
    pub fn push(&mut self, doc_id: i64, pos: i32, token_id: i32, val: bool) {
        self.rows.insert((doc_id, pos), self.tokens.len() as u32);
        self.doc_id.push(doc_id);
        self.pos.push(pos);
        self.tokens.push(token_id);
        self.val.push(val);
    }

    /// Row `r` as an example of activation `value`.
    pub fn example(&self, r: usize, value: f32) -> Example {
        Example {
            value,
            doc_id: self.doc_id[r],
            pos: self.pos[r],
            token_id: self.tokens[r],
        }
    }
}

/// An example whose context is wanted: feature `feature`'s peak at (doc_id, pos).
pub struct Want {
    pub feature: u32,
    pub doc_id: i64,
    pub pos: i32,
}

/// The tokens from position `start` on around a peak, with the feature's activation at each.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    pub start: i32,
    pub tokens: Vec<i32>,
    pub acts: Vec<f32>,
}

/// The context of every wanted example: the run of stored positions within `CONTEXT` of the
/// peak that contains it, and the feature's activation there (0 where top-k did not select it).
pub fn contexts(wants: &[Want], index: &RowIndex, spill: &mut LatentSpill) -> Result<Vec<Context>> {
    let mut out = Vec::with_capacity(wants.len());
    // (row, example, offset in its context)
    let mut needs: Vec<(u32, u32, u16)> = Vec::new();
    for (w_i, w) in wants.iter().enumerate() {
        let at = |p: i32| index.rows.get(&(w.doc_id, p)).copied();
        let (mut lo, mut hi) = (w.pos, w.pos);
        while lo > w.pos - CONTEXT && at(lo - 1).is_some() {
            lo -= 1;
        }
        while hi < w.pos + CONTEXT && at(hi + 1).is_some() {
            hi += 1;
        }
        let mut c = Context {
            start: lo,
            tokens: Vec::new(),
            acts: Vec::new(),
        };
        if at(w.pos).is_some() {
            for p in lo..=hi {
                let r = at(p).unwrap();
                c.tokens.push(index.tokens[r as usize]);
                c.acts.push(0.0);
                needs.push((r, w_i as u32, (p - lo) as u16));
            }
        }
        out.push(c);
    }
    needs.sort_unstable();
    let mut next = 0;
    spill.for_each(&mut |row, latents| {
        while next < needs.len() && needs[next].0 as usize == row {
            let (_, w_i, off) = needs[next];
            let feature = wants[w_i as usize].feature;
            if let Some(&(_, v)) = latents.iter().find(|(j, _)| *j == feature) {
                out[w_i as usize].acts[off as usize] = v;
            }
            next += 1;
        }
    })?;
    Ok(out)
}

/// One (index, value) pair: a latent (feature, activation), or a token and its logit.
pub type Latent = (u32, f32);

/// The largest and the smallest entries of something, each list best first.
pub type Extremes = (Vec<Latent>, Vec<Latent>);

/// The `n` largest and `n` smallest of `values` as (index, value), largest (smallest) first;
/// among equal values the earlier index first. One pass: most values fail one comparison.
fn extremes(values: &[f32], n: usize) -> Extremes {
    let mut ex = (Vec::with_capacity(n + 1), Vec::with_capacity(n + 1));
    extend_extremes(&mut ex, values, 0, n);
    ex
}

/// `ex` (the extremes of the values before these) updated with `values`, the first at index
/// `offset`: scanning in pieces gives what one scan of the whole would.
fn extend_extremes(ex: &mut Extremes, values: &[f32], offset: u32, n: usize) {
    if n == 0 {
        return;
    }
    let (top, bottom) = ex;
    for (c, chunk) in values.chunks(CHUNK).enumerate() {
        // Once both lists are full, most chunks hold nothing that enters either.
        if top.len() == n && bottom.len() == n {
            let (lo, hi) = range(chunk);
            if hi <= top[n - 1].1 && lo >= bottom[n - 1].1 {
                continue;
            }
        }
        for (i, &v) in chunk.iter().enumerate() {
            if v.is_nan() {
                continue;
            }
            let i = offset + (c * CHUNK + i) as u32;
            keep(top, n, (i, v), |a, b| a > b);
            keep(bottom, n, (i, v), |a, b| a < b);
        }
    }
}

/// `list` (at most `n`, best first) with `e` entered where it ranks; `better(a, b)`: a ranks
/// before b. An entry equal to one already listed goes after it, so entries offered in index
/// order rank ties to the earlier index.
fn keep(list: &mut Vec<Latent>, n: usize, e: Latent, better: fn(f32, f32) -> bool) {
    if list.len() == n && !better(e.1, list[n - 1].1) {
        return;
    }
    let at = list.partition_point(|x| !better(e.1, x.1));
    list.insert(at, e);
    list.truncate(n);
}

/// Values per chunk that `extend_extremes` checks at once.
const CHUNK: usize = 64;

/// The smallest and largest of `values`, NaNs ignored, in 8 lanes (so it vectorises).
fn range(values: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8]);
    let lanes = values.chunks_exact(8);
    let tail = lanes.remainder();
    for v in lanes {
        for j in 0..8 {
            lo[j] = if v[j] < lo[j] { v[j] } else { lo[j] };
            hi[j] = if v[j] > hi[j] { v[j] } else { hi[j] };
        }
    }
    lo.iter()
        .zip(&hi)
        .chain(tail.iter().zip(tail))
        .fold((f32::INFINITY, f32::NEG_INFINITY), |a, (l, h)| {
            (a.0.min(*l), a.1.max(*h))
        })
}

/// Per feature, the `LOGITS` tokens whose logits its decoder direction raises most and lowers
/// most: `unembed · (norm ⊙ w_dec[i])`, `unembed` [vocab × d]. The final RMSNorm's weight is
/// folded into the direction; its 1/rms scale is not (it depends on the residual).
///
/// This is 7,168 directions against a 151,936-token unembedding per SAE of the study, most of a
/// `stats` step. Where the CPU has AVX-512 BF16 a bf16 product screens the tokens and only those
/// that can rank are scored in f32 (`screened`): the answer is what scoring every token with
/// `dot` gives, at about half the cost.
pub fn logit_effects(w_dec: &[f32], d: usize, unembed: &[f32], norm: &[f32]) -> Vec<Extremes> {
    logit_effects_with(w_dec, d, unembed, norm, true)
}

/// `logit_effects`, screened or not (`saerl bench stats` times both).
pub fn logit_effects_with(
    w_dec: &[f32],
    d: usize,
    unembed: &[f32],
    norm: &[f32],
    screen: bool,
) -> Vec<Extremes> {
    let dirs: Vec<f32> = w_dec
        .par_chunks(d)
        .flat_map_iter(|r| r.iter().zip(norm).map(|(w, g)| w * g))
        .collect();
    (screen && bf16::available())
        .then(|| screened(&dirs, d, unembed, SCREEN))
        .flatten()
        .unwrap_or_else(|| scored(&dirs, d, unembed))
}

/// Every token scored in f32, a tile of features × tokens at a time: each GEMM reads a slice of
/// the unembedding that stays in cache, and the unembedding is read once per block of features
/// (512 rows of its product amortise the packing that 64 did not).
fn scored(dirs: &[f32], d: usize, unembed: &[f32]) -> Vec<Extremes> {
    const FEATURES: usize = 512;
    const TOKENS: usize = 8192;
    let (n, vocab) = (dirs.len() / d, unembed.len() / d);
    let mut out = Vec::with_capacity(n);
    let mut logits = vec![0f32; FEATURES * TOKENS];
    for start in (0..n).step_by(FEATURES) {
        let m = FEATURES.min(n - start);
        let mut block: Vec<Extremes> = vec![(Vec::new(), Vec::new()); m];
        for t0 in (0..vocab).step_by(TOKENS) {
            let t = TOKENS.min(vocab - t0);
            let tokens = &unembed[t0 * d..(t0 + t) * d];
            sgemm_nt(
                m,
                t,
                d,
                &dirs[start * d..],
                tokens,
                &mut logits[..m * t],
                false,
            );
            block
                .par_iter_mut()
                .zip(logits[..m * t].par_chunks(t))
                .for_each(|(ex, row)| extend_extremes(ex, row, t0 as u32, LOGITS));
        }
        out.extend(block);
    }
    out
}

/// Features per task × tokens per block of `screened`: a task keeps a panel of the block's bf16
/// unembedding in cache across its 8 tiles, and a block (7 MB) stays in the last-level cache
/// while every task reads it.
const SCREEN: (usize, usize) = (64, 4096);

/// `scored`'s answer with f32 dots, through a bf16 screen. Per block of tokens, every entry of
/// the bf16 product lies within a bound `e` of its f32 dot (`bf16::bound`), so a token can be
/// among a feature's top `LOGITS` only if its value + `e` reaches the `LOGITS`-th largest
/// value − `e` seen so far; only those candidates are scored with `dot`, and ranked as
/// `extremes` ranks (ties to the earlier token). `None` when a bound is not finite (NaN or
/// huge weights): the caller scores every token instead.
fn screened(
    dirs: &[f32],
    d: usize,
    unembed: &[f32],
    block: (usize, usize),
) -> Option<Vec<Extremes>> {
    use bf16::{PanelB, TiledA, PANEL, TILE_ROWS};
    let (features, tokens) = block;
    debug_assert_eq!(features % TILE_ROWS, 0, "a task's features are whole tiles");
    let (n, vocab) = (dirs.len() / d, unembed.len() / d);
    let a = TiledA::new(dirs, d);
    let mut sides: Vec<[Side; 2]> = (0..n).map(|_| [Side::default(), Side::default()]).collect();
    for t0 in (0..vocab).step_by(tokens) {
        let t = tokens.min(vocab - t0);
        let b = PanelB::new(&unembed[t0 * d..(t0 + t) * d], d);
        let margins = a
            .norms
            .iter()
            .map(|na| bf16::bound(na, &b.max, d))
            .collect::<Option<Vec<f32>>>()?;
        sides
            .par_chunks_mut(features)
            .enumerate()
            .for_each(|(g, group)| {
                let mut out = [0f32; TILE_ROWS * PANEL];
                for p in 0..b.panels() {
                    let valid = PANEL.min(t - p * PANEL);
                    for (k, rows) in group.chunks_mut(TILE_ROWS).enumerate() {
                        let first = g * features + k * TILE_ROWS;
                        // A token can enter a side only at or beyond its cut ∓ e.
                        let (mut lo, mut hi) =
                            ([f32::NEG_INFINITY; TILE_ROWS], [f32::INFINITY; TILE_ROWS]);
                        for (r, [top, bottom]) in rows.iter().enumerate() {
                            let e = margins[first + r];
                            (lo[r], hi[r]) = (e - bottom.cut(), top.cut() - e);
                        }
                        let flags = bf16::tile(&a, first / TILE_ROWS, &b, p, &mut out, &lo, &hi);
                        for (r, [top, bottom]) in rows.iter_mut().enumerate() {
                            if flags >> r & 1 == 0 {
                                continue;
                            }
                            let e = margins[first + r];
                            for (l, &v) in out[r * PANEL..][..valid].iter().enumerate() {
                                let j = (t0 + p * PANEL + l) as u32;
                                top.push(j, v, e);
                                bottom.push(j, -v, e);
                            }
                        }
                    }
                }
            });
    }
    Some(
        sides
            .into_par_iter()
            .enumerate()
            .map(|(i, [top, bottom])| {
                let row = &dirs[i * d..(i + 1) * d];
                let score = |j: u32| (j, dot(row, &unembed[j as usize * d..][..d]));
                (
                    top.best(score, |a, b| a > b),
                    bottom.best(score, |a, b| a < b),
                )
            })
            .collect(),
    )
}

/// One side of one feature's screen, values signed so that larger ranks first: the `LOGITS`
/// largest lower bounds (value − e) seen, and every token whose upper bound (value + e) reached
/// the smallest of them when it was seen.
#[derive(Default)]
struct Side {
    lows: Vec<f32>,
    candidates: Vec<(u32, f32)>,
}

impl Side {
    /// What a token's upper bound must reach to be a candidate.
    fn cut(&self) -> f32 {
        match self.lows.len() {
            LOGITS => self.lows[LOGITS - 1],
            _ => f32::NEG_INFINITY,
        }
    }

    fn push(&mut self, j: u32, v: f32, e: f32) {
        let (lo, hi) = (v - e, v + e);
        if hi < self.cut() {
            return;
        }
        self.candidates.push((j, hi));
        if self.lows.len() < LOGITS || lo > self.lows[LOGITS - 1] {
            let at = self.lows.partition_point(|&x| x >= lo);
            self.lows.insert(at, lo);
            self.lows.truncate(LOGITS);
        }
        if self.candidates.len() > 32 * LOGITS + 256 {
            let cut = self.cut();
            self.candidates.retain(|c| c.1 >= cut);
        }
    }

    /// The `LOGITS` best candidates by their f32 `score`, ranked as `extremes` ranks (`better`,
    /// ties to the earlier token: candidates were pushed in token order).
    fn best(self, score: impl Fn(u32) -> Latent, better: fn(f32, f32) -> bool) -> Vec<Latent> {
        let cut = self.cut();
        let mut list = Vec::with_capacity(LOGITS + 1);
        for c in self.candidates.into_iter().filter(|c| c.1 >= cut) {
            keep(&mut list, LOGITS, score(c.0), better);
        }
        list
    }
}

/// Per feature, the `NEAREST` other features of the same SAE with the highest decoder cosine.
pub fn nearest(w_dec: &[f32], d: usize) -> Vec<Vec<(u32, f32)>> {
    let mut out = Vec::with_capacity(w_dec.len() / d);
    for_each_cosine_row(w_dec, w_dec, d, |i, row| {
        row[i] = f32::NEG_INFINITY;
        let (top, _) = extremes(row, NEAREST);
        out.push(
            top.into_iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(j, v)| (j, v.clamp(-1.0, 1.0)))
                .collect(),
        );
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(value: f32, pos: i32) -> Example {
        Example {
            value,
            doc_id: 0,
            pos,
            token_id: 0,
        }
    }

    #[test]
    fn bins_split_zero_to_max_and_samples_stay_in_their_bin() {
        let mut s = Spread::new(&[Some(10.0)], 1);
        for i in 0..1000 {
            s.add(0, ex((i % 100) as f32 / 10.0 + 0.05, i));
        }
        s.add(0, ex(0.0, 0)); // zero: not counted
        assert_eq!(s.histogram(0).iter().sum::<u64>(), 1000);
        assert_eq!(s.histogram(0)[0], 20); // 0.05 and 0.15 of every hundred
        for (b, list) in s.quantile_examples(0).iter().enumerate() {
            assert_eq!(list.len(), PER_QUANTILE);
            assert!(list
                .iter()
                .all(|e| bin_of(e.value, 10.0, QUANTILE_BINS) == b));
        }
        assert_eq!(bin_of(10.0, 10.0, HIST_BINS), HIST_BINS - 1);
    }

    /// Against a sort (ties to the earlier index, NaNs dropped), in one scan and in pieces whose
    /// chunks mostly get skipped once the lists are full.
    #[test]
    fn extremes_match_a_sort_in_one_scan_or_in_pieces() {
        let values: Vec<f32> = (0..5000u32)
            .map(|i| match i % 97 {
                0 => f32::NAN,
                _ => ((i.wrapping_mul(2654435761) >> 20) % 301) as f32 - 150.0,
            })
            .collect();
        let n = 7;
        let mut sorted: Vec<Latent> = (0..values.len() as u32)
            .map(|i| (i, values[i as usize]))
            .filter(|(_, v)| !v.is_nan())
            .collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let top: Vec<Latent> = sorted[..n].to_vec();
        sorted.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let bottom: Vec<Latent> = sorted[..n].to_vec();
        assert_eq!(extremes(&values, n), (top.clone(), bottom.clone()));
        let mut pieces = (Vec::new(), Vec::new());
        let mut at = 0;
        for len in [3, 61, 64, 1000, 1, 2500, 1371] {
            extend_extremes(&mut pieces, &values[at..at + len], at as u32, n);
            at += len;
        }
        assert_eq!(at, values.len());
        assert_eq!(pieces, (top, bottom));
    }

    #[test]
    fn extremes_are_ordered_and_nearest_skips_itself() {
        let (top, bottom) = extremes(&[3.0, -1.0, 7.0, 0.5, -4.0], 2);
        assert_eq!(top, vec![(2, 7.0), (0, 3.0)]);
        assert_eq!(bottom, vec![(4, -4.0), (1, -1.0)]);
        let w = [1.0, 0.0, 0.9, 0.1, 0.0, 1.0];
        let n = nearest(&w, 2);
        assert_eq!(n[0][0].0, 1);
        assert_eq!(n[2][0].0, 1);
        assert!(n
            .iter()
            .enumerate()
            .all(|(i, l)| l.iter().all(|(j, _)| *j as usize != i)));
    }

    #[test]
    fn screened_logit_effects_are_every_token_scored_in_f32() {
        let mut rng = SplitMix64::new(5);
        let (n, d, vocab) = (37, 23, 700);
        let mut v = |k: usize| -> Vec<f32> {
            (0..k)
                .map(|_| (rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32 - 0.5)
                .collect()
        };
        let dirs = v(n * d);
        let mut unembed = v(vocab * d);
        // Exact ties at the top and the bottom of feature 0 (copies of its direction, ±), and
        // near-ties elsewhere: copies of a token nudged by one ulp.
        for (j, s) in [(10, 3.0), (300, 3.0), (650, 3.0), (20, -2.0), (699, -2.0)] {
            let row: Vec<f32> = dirs[..d].iter().map(|x| x * s).collect();
            unembed[j * d..(j + 1) * d].copy_from_slice(&row);
        }
        for j in 100..140 {
            let src = (j * 7) % vocab;
            let row = unembed[src * d..(src + 1) * d].to_vec();
            unembed[j * d..(j + 1) * d].copy_from_slice(&row);
            unembed[j * d] = f32::from_bits(row[0].to_bits() + (j % 2) as u32);
        }
        let want: Vec<Extremes> = dirs
            .chunks(d)
            .map(|a| {
                let all: Vec<f32> = unembed.chunks(d).map(|b| dot(a, b)).collect();
                extremes(&all, LOGITS)
            })
            .collect();
        assert_eq!(
            want[0].0.iter().map(|x| x.0).take(3).collect::<Vec<_>>(),
            [10, 300, 650]
        );
        // Every token through the f32 GEMM: the same up to its rounding.
        for (got, w) in scored(&dirs, d, &unembed).iter().zip(&want) {
            for (x, y) in got.0.iter().chain(&got.1).zip(w.0.iter().chain(&w.1)) {
                assert!((x.1 - y.1).abs() < 1e-5, "{x:?} vs {y:?}");
            }
        }
        if !bf16::available() {
            return;
        }
        // Blocks that split features and tokens unevenly, and the study's.
        for block in [(16, 64), (8, 100), (24, 37), SCREEN] {
            assert_eq!(
                screened(&dirs, d, &unembed, block).unwrap(),
                want,
                "{block:?}"
            );
        }
        assert_eq!(logit_effects(&dirs, d, &unembed, &vec![1.0; d]), want);
        let mut bad = dirs.clone();
        bad[5] = f32::NAN;
        assert!(screened(&bad, d, &unembed, SCREEN).is_none());
    }

    #[test]
    fn contexts_read_the_feature_around_the_peak() {
        let mut index = RowIndex::default();
        let mut spill = LatentSpill::new().unwrap();
        for p in 0..30 {
            index.push(7, p, 100 + p, true);
            spill.push(&[(3, p as f32), (5, 1.0)]).unwrap();
        }
        let wants = [
            Want {
                feature: 3,
                doc_id: 7,
                pos: 2,
            },
            Want {
                feature: 5,
                doc_id: 7,
                pos: 20,
            },
            Want {
                feature: 3,
                doc_id: 8,
                pos: 0,
            },
        ];
        let c = contexts(&wants, &index, &mut spill).unwrap();
        assert_eq!(c[0].start, 0);
        assert_eq!(c[0].tokens.len(), 15);
        assert_eq!(c[0].acts[2], 2.0);
        assert_eq!(c[1].start, 8);
        assert_eq!(c[1].tokens.len(), 22);
        assert!(c[1].acts.iter().all(|&v| v == 1.0));
        assert!(c[2].tokens.is_empty());
    }
}

//! `bench match`: `match_features`'s one-to-one assignment at the study's shape (two SAEs of
//! d_sae 7168 over d_model 896): once for two unrelated random dictionaries (the hard case for
//! Jonker–Volgenant: every cosine near 0) and once for a dictionary against a permuted, noisy
//! copy of itself (what two separately trained SAEs look like).

use anyhow::Result;
use rand::{rngs::SmallRng, SeedableRng};

use crate::rng::{normal, permutation};
use crate::sql::matching::assignment;

pub fn run(n: usize, d: usize) -> Result<()> {
    let mut rng = SmallRng::seed_from_u64(5);
    let mut draw = |len: usize| (0..len).map(|_| normal(&mut rng)).collect::<Vec<f32>>();
    let a = draw(n * d);
    let unrelated = draw(n * d);
    let noise = draw(n * d);
    let perm = permutation(n, 9);
    let mut related = vec![0f32; n * d];
    for (i, &p) in perm.iter().enumerate() {
        for j in 0..d {
            related[p * d + j] = a[i * d + j] + 0.5 * noise[i * d + j];
        }
    }
    println!("match_features assignment, {n} × {n} features of width {d}:");
    for (what, b) in [
        ("unrelated random dictionaries", &unrelated),
        ("a permuted noisy copy", &related),
    ] {
        let t = std::time::Instant::now();
        let m = assignment(&a, b, d)?;
        let secs = t.elapsed().as_secs_f64();
        let mean = m.iter().map(|r| r.2 as f64).sum::<f64>() / m.len() as f64;
        let recovered = m.iter().filter(|&&(i, j, _)| perm[i] == j).count();
        println!(
            "  {what}: {secs:.1} s, mean matched cosine {mean:.3}{}",
            if std::ptr::eq(b, &related) {
                format!(", {recovered} of {n} planted pairs recovered")
            } else {
                String::new()
            }
        );
    }
    if let Some(rss) = super::peak_rss() {
        println!("  peak RSS {:.2} GiB", super::gib(rss));
    }
    Ok(())
}

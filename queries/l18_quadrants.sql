-- title: Layer 18, first transition: features by decoder and encoder drift
-- chart: bar
-- x: quadrant
-- y: n_features
-- series: chain
-- Median split of dec_cos and enc_cos (high = at or above the median): stable (high, high),
-- reweighted (high dec, low enc), redirected (low dec, high enc), rotated (low, low). With
-- `saerl stats`: mean val densities before and after, and births/deaths (alive = density > 1e-4).
WITH first AS (
    SELECT chain, k, MIN(step_from) AS step_from
    FROM sae_transitions WHERE layer = 18 GROUP BY chain, k
), d AS (
    SELECT f.*, a.density AS density_from, b.density AS density_to
    FROM feature_drift f
    JOIN first ON first.chain = f.chain AND first.k = f.k AND first.step_from = f.step_from
    LEFT JOIN feature_stats a ON a.chain = f.chain AND a.stage = f.stage_from
     AND a.layer = f.layer AND a.k = f.k AND a.feature = f.feature AND a.split = 'val'
    LEFT JOIN feature_stats b ON b.chain = f.chain AND b.stage = f.stage_to
     AND b.layer = f.layer AND b.k = f.k AND b.feature = f.feature AND b.split = 'val'
    WHERE f.layer = 18
), m AS (
    SELECT chain, k, MEDIAN(dec_cos) AS dec_med, MEDIAN(enc_cos) AS enc_med FROM d GROUP BY chain, k
)
SELECT d.chain, d.k, d.stage_from, d.stage_to,
       CASE WHEN d.dec_cos >= m.dec_med AND d.enc_cos >= m.enc_med THEN 'stable'
            WHEN d.dec_cos >= m.dec_med THEN 'reweighted'
            WHEN d.enc_cos >= m.enc_med THEN 'redirected'
            ELSE 'rotated' END AS quadrant,
       COUNT(*) AS n_features,
       AVG(d.dec_cos) AS dec_cos_mean,
       AVG(d.enc_cos) AS enc_cos_mean,
       AVG(d.density_from) AS density_from_mean,
       AVG(d.density_to) AS density_to_mean,
       SUM(CASE WHEN d.density_from <= 1e-4 AND d.density_to > 1e-4 THEN 1 ELSE 0 END) AS born,
       SUM(CASE WHEN d.density_from > 1e-4 AND d.density_to <= 1e-4 THEN 1 ELSE 0 END) AS died
FROM d JOIN m ON m.chain = d.chain AND m.k = d.k
GROUP BY d.chain, d.k, d.stage_from, d.stage_to, quadrant
ORDER BY d.chain, quadrant

-- title: Layer 18, first transition: features by decoder and encoder drift
-- chart: bar
-- x: quadrant
-- y: n_features
-- series: chain
-- Median split of dec_cos and enc_cos (high = at or above the median): stable (high, high),
-- reweighted (high dec, low enc), redirected (low dec, high enc), rotated (low, low).
WITH first AS (
    SELECT chain, k, MIN(step_from) AS step_from
    FROM sae_transitions WHERE layer = 18 GROUP BY chain, k
), d AS (
    SELECT f.* FROM feature_drift f
    JOIN first ON first.chain = f.chain AND first.k = f.k AND first.step_from = f.step_from
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
       AVG(d.enc_cos) AS enc_cos_mean
FROM d JOIN m ON m.chain = d.chain AND m.k = d.k
GROUP BY d.chain, d.k, d.stage_from, d.stage_to, quadrant
ORDER BY d.chain, quadrant

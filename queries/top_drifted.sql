-- title: Most-drifted features between the first and last stage, with their top tokens
-- chart: bar
-- x: feature
-- y: drift
-- series: chain
-- facet: layer
-- drift = 1 − cosine of a feature's decoder column at the chain's first and last stage (same
-- index), among features with density ≥ 1e-3 on the last stage's val rows; the ten most drifted
-- per chain, layer and k, with the tokens of their top examples at the last stage.
WITH ends AS (
    SELECT s.chain, MIN(s.step) AS first_step, MAX(s.step) AS last_step FROM stages s
    JOIN saes x ON x.chain = s.chain AND x.stage = s.stage
    GROUP BY s.chain
), pairs AS (
    SELECT e.chain, a.stage AS first_stage, b.stage AS last_stage
    FROM ends e
    JOIN stages a ON a.chain = e.chain AND a.step = e.first_step
    JOIN stages b ON b.chain = e.chain AND b.step = e.last_step
    WHERE e.last_step > e.first_step
), drift AS (
    SELECT p.chain, fa.layer, fa.k, p.first_stage, p.last_stage, fa.feature,
           1 - decoder_cosine(fa.w_dec, fb.w_dec) AS drift
    FROM pairs p
    JOIN features fa ON fa.chain = p.chain AND fa.stage = p.first_stage
    JOIN features fb ON fb.chain = p.chain AND fb.stage = p.last_stage
     AND fb.layer = fa.layer AND fb.k = fa.k AND fb.feature = fa.feature
), ranked AS (
    SELECT d.*, st.density,
           ROW_NUMBER() OVER (PARTITION BY d.chain, d.layer, d.k ORDER BY d.drift DESC) AS rnk
    FROM drift d
    JOIN feature_stats st ON st.chain = d.chain AND st.stage = d.last_stage
     AND st.layer = d.layer AND st.k = d.k AND st.feature = d.feature AND st.split = 'val'
    WHERE st.density >= 1e-3
)
SELECT r.chain, r.layer, r.k, r.first_stage, r.last_stage, r.feature, r.drift, r.density,
       string_agg(v.token, ' | ' ORDER BY t.rank) AS top_tokens
FROM ranked r
LEFT JOIN top_examples t ON t.chain = r.chain AND t.stage = r.last_stage AND t.layer = r.layer
 AND t.k = r.k AND t.feature = r.feature AND t.rank <= 8 AND coalesce(t.split, 'val') = 'val'
LEFT JOIN vocab v ON v.chain = r.chain AND v.stage = r.last_stage AND v.token_id = t.token_id
WHERE r.rnk <= 10
GROUP BY r.chain, r.layer, r.k, r.first_stage, r.last_stage, r.feature, r.drift, r.density
ORDER BY r.chain, r.layer, r.k, r.drift DESC

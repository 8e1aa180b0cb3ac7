-- title: KL budget: kl0p025 over flexible per-step decoder drift
-- chart: bar
-- x: layer
-- y: ratio
-- series: transition
-- Same reward, five times the KL coefficient: a ratio near 1 (not 5) means the KL budget
-- barely changes how fast features move. Layers 6/12/18, transitions 0→10 and 10→30.
WITH rate AS (
    SELECT chain, layer, k, step_from, step_to,
           (1 - AVG(dec_cos)) / GREATEST(step_to - step_from, 1) AS dec_rate,
           (1 - AVG(enc_cos)) / GREATEST(step_to - step_from, 1) AS enc_rate
    FROM feature_drift
    WHERE chain IN ('flexible', 'kl0p025') AND layer IN (6, 12, 18)
    GROUP BY chain, layer, k, step_from, step_to
)
SELECT f.layer, f.k,
       CAST(f.step_from AS VARCHAR) || '→' || CAST(f.step_to AS VARCHAR) AS transition,
       f.dec_rate AS flexible_dec_rate,
       q.dec_rate AS kl0p025_dec_rate,
       q.dec_rate / f.dec_rate AS ratio,
       q.enc_rate / f.enc_rate AS enc_ratio
FROM rate f
JOIN rate q ON q.layer = f.layer AND q.k = f.k AND q.step_from = f.step_from AND q.step_to = f.step_to
WHERE f.chain = 'flexible' AND q.chain = 'kl0p025'
  AND ((f.step_from = 0 AND f.step_to = 10) OR (f.step_from = 10 AND f.step_to = 30))
ORDER BY f.layer, f.step_from

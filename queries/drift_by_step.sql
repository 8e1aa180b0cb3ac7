-- title: Per-step decoder drift rate along each chain
-- chart: line
-- x: step_to
-- y: dec_drift_per_step
-- series: sae
-- facet: layer
-- One line per chain (and k where a chain has two SAEs per layer), one panel per layer.
SELECT chain || ' k' || CAST(k AS VARCHAR) AS sae, layer, step_from, step_to,
       (1 - AVG(dec_cos)) / GREATEST(step_to - step_from, 1) AS dec_drift_per_step,
       (1 - AVG(enc_cos)) / GREATEST(step_to - step_from, 1) AS enc_drift_per_step
FROM feature_drift
GROUP BY chain, k, layer, step_from, step_to
ORDER BY layer, sae, step_to

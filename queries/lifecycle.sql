-- title: Features that died and were born per transition
-- chart: line
-- x: step_to
-- y: died
-- series: chain
-- facet: layer
-- alive = density > 1e-4 on the stage's own val rows; between consecutive stages a → b:
-- died = alive in a and not in b, born = not alive in a and alive in b, stayed = alive in both.
SELECT t.chain, t.layer, t.k, t.stage_from, t.stage_to, t.step_from, t.step_to,
       SUM(CASE WHEN a.density > 1e-4 AND b.density <= 1e-4 THEN 1 ELSE 0 END) AS died,
       SUM(CASE WHEN a.density <= 1e-4 AND b.density > 1e-4 THEN 1 ELSE 0 END) AS born,
       SUM(CASE WHEN a.density > 1e-4 AND b.density > 1e-4 THEN 1 ELSE 0 END) AS stayed,
       COUNT(*) AS n_features
FROM sae_transitions t
JOIN feature_stats a
  ON a.chain = t.chain AND a.layer = t.layer AND a.k = t.k AND a.stage = t.stage_from
JOIN feature_stats b
  ON b.chain = t.chain AND b.layer = t.layer AND b.k = t.k AND b.stage = t.stage_to
 AND b.feature = a.feature AND b.split = a.split
WHERE a.split = 'val'
GROUP BY t.chain, t.layer, t.k, t.stage_from, t.stage_to, t.step_from, t.step_to
ORDER BY t.chain, t.layer, t.k, t.step_to

-- title: Best-match decoder cosine and renaming gap per transition
-- chart: line
-- x: step_to
-- y: renaming_gap_mean
-- series: chain
-- facet: layer
-- For each feature of stage a, the largest cosine between its decoder column and any decoder
-- column of stage b (best_match table function), next to the same-index cosine;
-- renaming_gap = best − aligned. `renamed` counts features whose best match has another index.
SELECT chain, layer, k, stage_from, stage_to, step_from, step_to,
       COUNT(*) AS n_features,
       AVG(best_cos) AS best_cos_mean,
       AVG(aligned_cos) AS aligned_cos_mean,
       AVG(renaming_gap) AS renaming_gap_mean,
       MAX(renaming_gap) AS renaming_gap_max,
       SUM(CASE WHEN best_feature <> feature THEN 1 ELSE 0 END) AS renamed
FROM best_match()
GROUP BY chain, layer, k, stage_from, stage_to, step_from, step_to
ORDER BY chain, layer, k, step_to

-- title: Effective feature count per stage
-- chart: line
-- x: step
-- y: effective_count
-- series: chain
-- facet: layer
-- exp(Shannon entropy) of density / Σ density over the SAE's features (val rows of its own
-- stage; zero densities dropped), and the number alive (density > 1e-4).
SELECT f.chain, f.layer, f.k, f.stage, s.step,
       effective_count(f.density) AS effective_count,
       SUM(CASE WHEN f.density > 1e-4 THEN 1 ELSE 0 END) AS n_alive,
       COUNT(*) AS d_sae
FROM feature_stats f
JOIN stages s ON s.chain = f.chain AND s.stage = f.stage
WHERE f.split = 'val'
GROUP BY f.chain, f.layer, f.k, f.stage, s.step
ORDER BY f.chain, f.layer, f.k, s.step

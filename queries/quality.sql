-- title: SAE quality per chain, layer and stage
-- chart: line
-- x: step
-- y: nmse
-- series: chain
-- facet: layer
-- NMSE (val rows of the SAE's own stage) and CE loss recovered (frac_rec) from `saerl eval`.
SELECT e.chain, e.layer, e.k, e.stage, s.step,
       e.nmse, e.mean_l0, e.frac_rec, e.l_base, e.l_sae, e.l_mean, e.kl_sae, e.kl_rec,
       e.nmse_denom, e.ablation
FROM evals e
JOIN stages s ON s.chain = e.chain AND s.stage = e.stage
ORDER BY e.chain, e.layer, e.k, s.step

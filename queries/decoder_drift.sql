-- title: Decoder and encoder drift per consecutive-stage transition
-- chart: line
-- x: step_to
-- y: dec_drift_per_step
-- series: chain
-- facet: layer
-- The columns of the study's decoder_drift.csv (plus k, which tells strict's two layer-23 SAEs
-- apart). Quartiles interpolate linearly between order statistics, as numpy and torch do.
SELECT chain, layer, k, stage_from, stage_to, step_from, step_to,
       step_to - step_from AS d_step,
       COUNT(*) AS n_features,
       AVG(dec_cos) AS dec_cos_mean,
       MEDIAN(dec_cos) AS dec_cos_median,
       percentile_cont(0.25) WITHIN GROUP (ORDER BY dec_cos) AS dec_cos_q25,
       percentile_cont(0.75) WITHIN GROUP (ORDER BY dec_cos) AS dec_cos_q75,
       MIN(dec_cos) AS dec_cos_min,
       (1 - AVG(dec_cos)) / GREATEST(step_to - step_from, 1) AS dec_drift_per_step,
       AVG(enc_cos) AS enc_cos_mean,
       MEDIAN(enc_cos) AS enc_cos_median,
       (1 - AVG(enc_cos)) / GREATEST(step_to - step_from, 1) AS enc_drift_per_step,
       CORR(dec_cos, enc_cos) AS enc_dec_corr
FROM feature_drift
GROUP BY chain, layer, k, stage_from, stage_to, step_from, step_to
ORDER BY chain, layer, k, step_from

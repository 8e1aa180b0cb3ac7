-- Per-feature drift across each transition: cosine of feature i's decoder column and of its
-- encoder row (biases ignored) between consecutive stages. Feature i is the same feature
-- along a chain because each stage's SAE is warm-started from the previous one.
CREATE VIEW feature_drift AS
SELECT t.chain, t.layer, t.k, t.stage_from, t.stage_to, t.step_from, t.step_to, a.feature,
       decoder_cosine(a.w_dec, b.w_dec) AS dec_cos,
       decoder_cosine(a.w_enc, b.w_enc) AS enc_cos
FROM sae_transitions t
JOIN features a
  ON a.chain = t.chain AND a.stage = t.stage_from AND a.layer = t.layer AND a.k = t.k
JOIN features b
  ON b.chain = t.chain AND b.stage = t.stage_to AND b.layer = t.layer AND b.k = t.k
 AND b.feature = a.feature

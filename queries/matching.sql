-- title: One-to-one feature matching between chains' base SAEs (PW-MCC)
-- chart: bar
-- x: layer
-- y: pw_mcc
-- series: pair
-- The first stages of every pair of chains, matched one to one (Hungarian / Jonker–Volgenant on
-- decoder cosine, match_features): PW-MCC is the mean matched decoder cosine; the shares count
-- features whose match is closer than 0.7 and 0.9.
SELECT chain_a || ' ~ ' || chain_b AS pair, chain_a, chain_b, layer, k,
       count(*) AS features,
       avg(dec_cos) AS pw_mcc,
       avg(enc_cos) AS mean_enc_cos,
       avg(CASE WHEN dec_cos > 0.7 THEN 1.0 ELSE 0.0 END) AS share_above_0_7,
       avg(CASE WHEN dec_cos > 0.9 THEN 1.0 ELSE 0.0 END) AS share_above_0_9
FROM match_features()
GROUP BY chain_a, chain_b, layer, k
ORDER BY chain_a, chain_b, layer, k;

-- Consecutive SAEs of a chain (same layer and k), in step order: one row per transition.
CREATE VIEW sae_transitions AS
WITH s AS (
    SELECT a.chain, a.stage, a.layer, a.k, st.step
    FROM saes a
    JOIN stages st ON st.chain = a.chain AND st.stage = a.stage
), o AS (
    SELECT chain, layer, k,
           stage AS stage_from, step AS step_from,
           LEAD(stage) OVER (PARTITION BY chain, layer, k ORDER BY step) AS stage_to,
           LEAD(step)  OVER (PARTITION BY chain, layer, k ORDER BY step) AS step_to
    FROM s
)
SELECT chain, layer, k, stage_from, stage_to, step_from, step_to
FROM o
WHERE stage_to IS NOT NULL

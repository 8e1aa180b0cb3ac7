//! The `stages` table: one partition per chain, rewritten as a unit so that `parent_stage`
//! (the previous stage by step) is always consistent with the stages present.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};

use super::handle::Lake;
use super::partition::PartitionKey;
use super::schema::Table;
use super::write::Txn;

#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    pub chain: String,
    pub stage: String,
    pub step: i64,
    pub reward: Option<String>,
    pub kl_coef: Option<f64>,
    pub model_path: Option<String>,
}

/// The PPO step a stage name encodes: `instruct_base` is 0, `ppo_stepN` is N.
pub fn infer_step(stage: &str) -> Result<i64> {
    if stage == "instruct_base" {
        return Ok(0);
    }
    match stage
        .strip_prefix("ppo_step")
        .and_then(|n| n.parse::<i64>().ok())
    {
        Some(n) if n >= 0 => Ok(n),
        _ => bail!(
            "cannot infer the step of stage {stage:?}: name stages `instruct_base` or `ppo_stepN`"
        ),
    }
}

impl Lake {
    /// The stages of one chain, ordered by step.
    pub fn read_stages(&self, chain: &str) -> Result<Vec<StageRow>> {
        let key = PartitionKey::chain(chain);
        if !self.has_partition(Table::Stages, &key)? {
            return Ok(Vec::new());
        }
        let mut rows = Vec::new();
        for b in self.read_partition(Table::Stages, &key)? {
            let col = |n: &str| {
                b.column_by_name(n)
                    .with_context(|| format!("the stages table of chain {chain} has no column {n}"))
            };
            let s = |n: &str| col(n).map(|c| c.as_string::<i32>().clone());
            let (stage, reward, model) = (s("stage")?, s("reward")?, s("model_path")?);
            let step = col("step")?.as_primitive::<Int64Type>().clone();
            let kl = col("kl_coef")?.as_primitive::<Float64Type>().clone();
            for i in 0..b.num_rows() {
                rows.push(StageRow {
                    chain: chain.to_string(),
                    stage: stage.value(i).to_string(),
                    step: step.value(i),
                    reward: reward.is_valid(i).then(|| reward.value(i).to_string()),
                    kl_coef: kl.is_valid(i).then(|| kl.value(i)),
                    model_path: model.is_valid(i).then(|| model.value(i).to_string()),
                });
            }
        }
        rows.sort_by_key(|r| r.step);
        Ok(rows)
    }
}

impl Txn {
    /// Stages the `stages` partitions with `new` merged into what the lake holds now (at commit,
    /// under the lake lock). Known fields of existing rows survive when the new row leaves them
    /// unset; two stages of a chain may not share a step.
    pub(super) fn stage_merged_stages(&mut self, new: &[StageRow]) -> Result<()> {
        let mut chains: Vec<&str> = new.iter().map(|r| r.chain.as_str()).collect();
        chains.sort();
        chains.dedup();
        for chain in chains {
            let mut rows = self.lake().read_stages(chain)?;
            for n in new.iter().filter(|r| r.chain == chain) {
                match rows.iter_mut().find(|r| r.stage == n.stage) {
                    Some(r) => {
                        r.step = n.step;
                        r.reward = n.reward.clone().or(r.reward.take());
                        r.kl_coef = n.kl_coef.or(r.kl_coef);
                        r.model_path = n.model_path.clone().or(r.model_path.take());
                    }
                    None => rows.push(n.clone()),
                }
            }
            rows.sort_by_key(|r| r.step);
            if let Some(w) = rows.windows(2).find(|w| w[0].step == w[1].step) {
                bail!(
                    "chain {chain}: stages {} and {} both have step {}",
                    w[0].stage,
                    w[1].stage,
                    w[0].step
                );
            }
            let parents: Vec<Option<&str>> = std::iter::once(None)
                .chain(rows.iter().map(|r| Some(r.stage.as_str())))
                .take(rows.len())
                .collect();
            let batch = RecordBatch::try_new(
                Table::Stages.file_schema(None),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| r.stage.as_str()),
                    )),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.step))),
                    Arc::new(StringArray::from(
                        rows.iter().map(|r| r.reward.as_deref()).collect::<Vec<_>>(),
                    )),
                    Arc::new(Float64Array::from(
                        rows.iter().map(|r| r.kl_coef).collect::<Vec<_>>(),
                    )),
                    Arc::new(StringArray::from(
                        rows.iter()
                            .map(|r| r.model_path.as_deref())
                            .collect::<Vec<_>>(),
                    )),
                    Arc::new(StringArray::from(parents)),
                ],
            )?;
            self.write_replacing(Table::Stages, &PartitionKey::chain(chain), &batch)?;
        }
        Ok(())
    }
}

//! Consecutive SAEs of a chain: same layer and k, ordered by the stages' steps. This is the one
//! definition of "a transition" that drift statistics are computed over.

use std::collections::BTreeMap;

use anyhow::Result;

use super::handle::Lake;
use super::partition::PartitionKey;
use super::schema::Table;
use super::stages::infer_step;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transition {
    pub chain: String,
    pub layer: i32,
    pub k: i32,
    pub stage_from: String,
    pub stage_to: String,
    pub step_from: i64,
    pub step_to: i64,
}

impl Transition {
    pub fn from_key(&self) -> PartitionKey {
        PartitionKey::sae(&self.chain, &self.stage_from, self.layer, self.k)
    }
    pub fn to_key(&self) -> PartitionKey {
        PartitionKey::sae(&self.chain, &self.stage_to, self.layer, self.k)
    }
}

/// Per (chain, layer, k), the stages with an SAE, in step order: (step, stage).
pub type SaeSequences = BTreeMap<(String, i32, i32), Vec<(i64, String)>>;

impl Lake {
    /// The stages with an SAE of each (chain, layer, k), in step order: (step, stage).
    pub fn sae_sequences(&self) -> Result<SaeSequences> {
        let mut steps: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        let mut groups = SaeSequences::new();
        for (key, _) in self.partitions(Table::Saes)? {
            let chain_steps = match steps.get(&key.chain) {
                Some(s) => s,
                None => {
                    let rows = self.read_stages(&key.chain)?;
                    steps
                        .entry(key.chain.clone())
                        .or_insert(rows.into_iter().map(|r| (r.stage, r.step)).collect())
                }
            };
            let stage = key.stage.clone().unwrap_or_default();
            // A stage without a `stages` row still has the step its name encodes.
            let step = match chain_steps.get(&stage) {
                Some(&s) => s,
                None => infer_step(&stage)?,
            };
            groups
                .entry((
                    key.chain.clone(),
                    key.layer.unwrap_or(0),
                    key.k.unwrap_or(0),
                ))
                .or_default()
                .push((step, stage));
        }
        groups.values_mut().for_each(|s| s.sort());
        Ok(groups)
    }

    /// Every transition in the lake, grouped by (chain, layer, k) and in step order.
    pub fn sae_transitions(&self) -> Result<Vec<Transition>> {
        let mut out = Vec::new();
        for ((chain, layer, k), stages) in self.sae_sequences()? {
            for w in stages.windows(2) {
                out.push(Transition {
                    chain: chain.clone(),
                    layer,
                    k,
                    stage_from: w[0].1.clone(),
                    stage_to: w[1].1.clone(),
                    step_from: w[0].0,
                    step_to: w[1].0,
                });
            }
        }
        Ok(out)
    }
}

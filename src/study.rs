//! The published study's chains (DESIGN.md, "The study it serves"): used for defaults when
//! importing its checkpoints and as the shape of the demo's synthetic study.

pub struct ChainSpec {
    pub name: &'static str,
    pub reward: &'static str,
    pub kl_coef: f64,
    pub steps: &'static [i64],
}

pub const CHAINS: &[ChainSpec] = &[
    ChainSpec {
        name: "flexible",
        reward: "flexible",
        kl_coef: 0.005,
        steps: &[0, 10, 30, 60, 100, 140, 180, 200],
    },
    ChainSpec {
        name: "strict",
        reward: "strict",
        kl_coef: 0.005,
        steps: &[0, 10, 30, 50, 80, 116],
    },
    ChainSpec {
        name: "kl0p025",
        reward: "flexible",
        kl_coef: 0.025,
        steps: &[0, 10, 30],
    },
];

pub const LAYERS: &[i32] = &[6, 12, 18, 23];

/// Stage name of a step: `instruct_base` for 0, `ppo_stepN` otherwise.
pub fn stage_name(step: i64) -> String {
    if step == 0 {
        "instruct_base".into()
    } else {
        format!("ppo_step{step}")
    }
}

/// Reward and KL coefficient of a chain: the study's for its chains; for others, a KL
/// coefficient spelled in the name (`kl0p05` = 0.05) and no reward.
pub fn chain_defaults(chain: &str) -> (Option<String>, Option<f64>) {
    if let Some(c) = CHAINS.iter().find(|c| c.name == chain) {
        return (Some(c.reward.into()), Some(c.kl_coef));
    }
    let kl = chain
        .strip_prefix("kl")
        .and_then(|s| s.replacen('p', ".", 1).parse::<f64>().ok());
    (None, kl)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kl_coefficient_is_read_from_the_chain_name() {
        assert_eq!(super::chain_defaults("kl0p05"), (None, Some(0.05)));
        assert_eq!(super::chain_defaults("kl0p025").1, Some(0.025));
        assert_eq!(super::chain_defaults("other"), (None, None));
    }
}

//! `saerl init`: write a commented `saerl.toml` (the published study's chains as the example).

use std::path::Path;

use anyhow::{bail, Result};

use crate::project::TEMPLATE;

pub fn run(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists; pass --force to replace it",
            path.display()
        );
    }
    std::fs::write(path, TEMPLATE)?;
    println!("wrote {}: edit the model paths, then `saerl ingest --chain flexible --stage instruct_base`", path.display());
    Ok(())
}

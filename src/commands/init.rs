//! `saerl init`: write a commented `saerl.toml` (the published study's chains as the example).

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::project::TEMPLATE;

#[derive(clap::Args, Debug, Clone)]
pub struct InitArgs {
    /// Where to write the project file.
    #[arg(long, default_value = "saerl.toml")]
    pub path: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: &InitArgs) -> Result<()> {
    let path = &a.path;
    if path.exists() && !a.force {
        bail!(
            "{} already exists; pass --force to replace it",
            path.display()
        );
    }
    crate::durable::write_atomic(path, TEMPLATE.as_bytes())?;
    println!("wrote {}: edit the model paths, then `saerl ingest --chain flexible --stage instruct_base`", path.display());
    Ok(())
}

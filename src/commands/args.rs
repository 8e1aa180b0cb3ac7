//! Flags that mean the same in every command taking them, declared once and flattened in
//! (`#[command(flatten)]`). Each reads through to its value (`a.device.open()`, `*a.overwrite`,
//! `&*a.project`).

use std::ops::Deref;
use std::path::PathBuf;

use anyhow::Result;

/// Where a command computes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    // Needs a build with `--features cuda` and a GPU (the flag's help says so).
    Cuda,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }

    /// The candle device; fails with the fix when CUDA is not built in or no GPU answers.
    pub fn open(self) -> Result<candle_core::Device> {
        crate::model::device(self.name())
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct DeviceArg {
    /// Where the model and the SAEs compute: `cpu`, or `cuda` (needs a build with
    /// `--features cuda` and a GPU).
    #[arg(long = "device", value_enum, default_value_t)]
    device: Device,
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.device.fmt(f)
    }
}

impl Deref for DeviceArg {
    type Target = Device;
    fn deref(&self) -> &Device {
        &self.device
    }
}

#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Overwrite {
    /// Replace what this command would write that exists already (partitions, SAEs, statistics,
    /// eval rows); without it, existing results are kept.
    #[arg(long = "overwrite")]
    overwrite: bool,
}

impl Deref for Overwrite {
    type Target = bool;
    fn deref(&self) -> &bool {
        &self.overwrite
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ProjectArg {
    /// The project file: chains, stages and their models, data, the SAEs of each chain and the
    /// steps' settings (`saerl init` writes one).
    #[arg(long = "project", default_value = "saerl.toml")]
    project: PathBuf,
}

impl ProjectArg {
    pub fn new(project: impl Into<PathBuf>) -> Self {
        Self {
            project: project.into(),
        }
    }
}

impl Deref for ProjectArg {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.project
    }
}

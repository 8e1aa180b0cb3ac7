//! The command line: every subcommand and its flags (clap), and the dispatch to `commands/`.

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::commands::{
    bench, cluster, demo, eval, export, import, ingest, init, plot, report, run, serve, sql, stats,
    train,
};
use crate::lake::Lake;

#[derive(Parser)]
#[command(
    name = "saerl",
    version,
    about = "What does RL change inside a language model? SAE analytics over a Parquet lake."
)]
pub(crate) struct Cli {
    /// The lake: a directory, or an object store `s3://BUCKET/PREFIX` (credentials and endpoint
    /// from the AWS_* variables).
    #[arg(long, global = true, env = "SAERL_LAKE", default_value = "./lake")]
    pub lake: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Write a commented saerl.toml template (chains, rewards, KL coefficients, stages, data).
    Init(init::InitArgs),
    /// Run a checkpoint over GSM8k questions and store residual-stream activations.
    Ingest(ingest::Ingest),
    /// Import SAE checkpoints from other formats.
    Import(import::ImportArgs),
    /// Train TopK SAEs along a chain (warm-started stage to stage) from its activations.
    Train(train::TrainArgs),
    /// SAE quality: NMSE and L0 on val rows, CE loss recovered with the SAE spliced in.
    Eval(eval::EvalArgs),
    /// Per-feature statistics (density, counts, activations) and top examples of SAEs.
    Stats(stats::StatsArgs),
    /// Export SAEs to other formats.
    Export(export::ExportArgs),
    /// SQL over the lake: an interactive shell, or -c / -f.
    Sql(sql::SqlArgs),
    /// Run a saved query and draw it from its `-- title/chart/x/y/series/facet` header.
    Plot(plot::PlotArgs),
    /// Run every saved query into one HTML page (inline SVG figures, tables) and CSVs.
    Report(report::ReportArgs),
    /// The whole study saerl.toml declares: ingest, train, eval, stats and the report, skipping
    /// what is done, resuming what was interrupted (--dry-run shows the plan).
    Run(run::RunArgs),
    /// A read-only feature browser over the lake: study, transition and feature pages, search
    /// and a SQL box, each page with a JSON twin under /api.
    Serve(serve::ServeArgs),
    /// The whole pipeline on a tiny model trained on the spot and a synthetic study.
    Demo(demo::DemoArgs),
    /// Benchmarks (figures and ratios, not pass/fail).
    Bench(bench::BenchArgs),
    /// Run a Ballista scheduler or executor for `sql --cluster` (same --lake everywhere).
    Cluster(cluster::ClusterArgs),
}

/// glibc hands freed memory back to the system from a few hundred KiB on (its thresholds adapt
/// only up to a point): candle allocates and drops tensors of megabytes at every op, so each one
/// came back as fresh pages, faulted in and zeroed (the demo's next-token training spent a
/// quarter of its time there: 51 s → 38 s). Blocks up to 32 MiB now stay with the allocator, and
/// up to 64 MiB of free heap is kept; the benchmarks' peak RSS is unchanged.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters, before any other thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        }
    }
}

/// The program: parses the command line, runs it on a multi-threaded tokio runtime and reports
/// an error. It lives here rather than in the binary so that the binary instantiates none of the
/// async call tree below `run` (that cost the binary's crate two minutes of every build).
pub fn main() -> std::process::ExitCode {
    keep_freed_memory();
    let cli = <Cli as clap::Parser>::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(run(&cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command line.
pub(crate) async fn run(cli: &Cli) -> Result<()> {
    let lake = Lake::at(&cli.lake).map_err(|e| e.context(format!("--lake {}", cli.lake)))?;
    match &cli.command {
        Command::Init(a) => init::run(a),
        Command::Ingest(a) => ingest::run(&lake.waiting(a.wait), a).map(|_| ()),
        Command::Import(a) => import::run(&lake, a),
        Command::Train(a) => train::run(&lake.waiting(a.wait), a).map(|_| ()),
        Command::Eval(a) => eval::run(&lake, a).map(|_| ()),
        Command::Stats(a) => stats::run(&lake, a).map(|_| ()),
        Command::Run(a) => run::run(&lake, a),
        Command::Export(a) => export::run(&lake, a),
        Command::Sql(a) => sql::run(&lake, a).await,
        Command::Plot(a) => plot::run(&lake, a).await,
        Command::Report(a) => report::run(&lake, a).await,
        Command::Serve(a) => serve::run(&lake, a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Bench(a) => bench::run(&lake, a).await,
        Command::Cluster(a) => cluster::run(&lake, a).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag and argument of every subcommand says what it does in `--help`.
    #[test]
    fn every_flag_has_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the subcommand)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "saerl", &mut missing);
        assert!(
            missing.is_empty(),
            "flags without a --help line:\n{}",
            missing.join("\n")
        );
    }

    /// `--wait` is offered only by the commands that take a work lock (ingest, train).
    #[test]
    fn wait_appears_only_where_it_acts() {
        let cli = super::Cli::command();
        let with_wait: Vec<&str> = cli
            .get_subcommands()
            .filter(|c| c.get_arguments().any(|a| a.get_id() == "wait"))
            .map(|c| c.get_name())
            .collect();
        assert_eq!(with_wait, ["ingest", "train"]);
        assert!(cli.get_arguments().all(|a| a.get_id() != "wait"));
    }

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

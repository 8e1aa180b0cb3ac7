//! Command-line entry: parses arguments and hands over to `saerl::commands`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use saerl::commands::{
    bench, cluster, demo, eval, export, import, ingest, init, plot, report, sql, stats, train,
};
use saerl::lake::Lake;

#[derive(Parser)]
#[command(
    name = "saerl",
    version,
    about = "What does RL change inside a language model? SAE analytics over a Parquet lake."
)]
struct Cli {
    /// The lake: a directory, or an object store `s3://BUCKET/PREFIX` (credentials and endpoint
    /// from the AWS_* variables).
    #[arg(long, global = true, env = "SAERL_LAKE", default_value = "./lake")]
    lake: String,
    /// When another saerl is doing the same work in the lake (ingesting the same stage, training
    /// the same SAE), wait for it instead of failing.
    #[arg(long, global = true)]
    wait: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// The whole pipeline on a tiny model trained on the spot and a synthetic study.
    Demo(demo::DemoArgs),
    /// Benchmarks (figures and ratios, not pass/fail).
    Bench(bench::BenchArgs),
    /// Run a Ballista scheduler or executor for `sql --cluster` (same --lake everywhere).
    Cluster(cluster::ClusterArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let lake = match Lake::at(&cli.lake) {
        Ok(l) => l.waiting(cli.wait),
        Err(e) => {
            eprintln!("error: --lake {}: {e:#}", cli.lake);
            return ExitCode::FAILURE;
        }
    };
    let result = match &cli.command {
        Command::Init(a) => init::run(a),
        Command::Ingest(a) => ingest::run(&lake, a).map(|_| ()),
        Command::Import(a) => import::run(&lake, a),
        Command::Train(a) => train::run(&lake, a),
        Command::Eval(a) => eval::run(&lake, a),
        Command::Stats(a) => stats::run(&lake, a),
        Command::Export(a) => export::run(&lake, a),
        Command::Sql(a) => sql::run(&lake, a).await,
        Command::Plot(a) => plot::run(&lake, a).await,
        Command::Report(a) => report::run(&lake, a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Bench(a) => bench::run(&lake, a).await,
        Command::Cluster(a) => cluster::run(&lake, a).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! Command-line entry: parses arguments and hands over to `saerl::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use saerl::commands::{
    bench, demo, eval, export, import, ingest, init, plot, report, sql, stats, train,
};
use saerl::lake::Lake;
use saerl::sql::Format;
use saerl::study as saerl_study;

#[derive(Parser)]
#[command(
    name = "saerl",
    version,
    about = "What does RL change inside a language model? SAE analytics over a Parquet lake."
)]
struct Cli {
    /// The lake directory.
    #[arg(long, global = true, env = "SAERL_LAKE", default_value = "./lake")]
    lake: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented saerl.toml template (chains, rewards, KL coefficients, stages).
    Init {
        #[arg(long, default_value = "saerl.toml")]
        path: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Run a checkpoint over GSM8k questions and store residual-stream activations.
    Ingest(ingest::Ingest),
    /// Import SAE checkpoints from other formats.
    Import {
        #[command(subcommand)]
        what: ImportWhat,
    },
    /// Train TopK SAEs along a chain (warm-started stage to stage) from its activations.
    Train(train::TrainArgs),
    /// SAE quality: NMSE and L0 on val rows, CE loss recovered with the SAE spliced in.
    Eval(eval::EvalArgs),
    /// Per-feature statistics (density, counts, activations) and top examples of SAEs.
    Stats(stats::StatsArgs),
    /// Export SAEs to other formats.
    Export {
        #[command(subcommand)]
        what: ExportWhat,
    },
    /// SQL over the lake: an interactive shell, or -c / -f.
    Sql {
        /// Run one SQL text and exit.
        #[arg(short = 'c', long = "command", conflicts_with = "file")]
        command: Option<String>,
        /// Run the statements of a file and exit.
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Run a saved query and draw it from its `-- title/chart/x/y/series/facet` header.
    Plot {
        file: PathBuf,
        /// Output figure: .svg or .png.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Run every saved query into one HTML page (inline SVG figures, tables) and CSVs.
    Report {
        /// Output directory (report.html and one CSV per query).
        #[arg(default_value = "report")]
        dir: PathBuf,
    },
    /// The whole pipeline on a tiny generated model and a synthetic study; figures in --out.
    Demo {
        #[arg(long, default_value = "./saerl-demo")]
        out: PathBuf,
        #[arg(long, default_value = saerl_study::GSM8K_TRAIN)]
        data: PathBuf,
        #[arg(long, default_value = saerl_study::QWEN_TOKENIZER)]
        tokenizer: PathBuf,
        /// Questions to ingest per stage.
        #[arg(long, default_value_t = 300)]
        prompts: usize,
    },
    /// Benchmarks (figures and ratios, not pass/fail).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum ImportWhat {
    /// PyTorch `.pt` checkpoints: a tree of `sae_<chain>/[sub/]sae_{stage}_layer{N}.pt`, or one file.
    Pt {
        path: PathBuf,
        #[arg(long)]
        chain: Option<String>,
        #[arg(long)]
        stage: Option<String>,
        #[arg(long)]
        layer: Option<i32>,
        /// Replace partitions that already exist.
        #[arg(long)]
        overwrite: bool,
    },
}

#[derive(Subcommand)]
enum ExportWhat {
    /// The published `.pt` format, as a tree that `saerl import pt` reads back.
    Pt {
        out: PathBuf,
        /// Only this chain.
        #[arg(long)]
        chain: Option<String>,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// SAE training steps at the study's shape (d 896, d_sae 7168, k 64, batch 512).
    Train {
        #[arg(long, default_value_t = 8)]
        steps: usize,
    },
    /// Feature statistics over synthetic rows at the study's shape (d 896, d_sae 7168, k 64).
    Stats {
        /// Rows (the study's full train split of one stage and layer: 445,744).
        #[arg(long, default_value_t = 445_744)]
        rows: usize,
    },
    /// Activation collection with a random model of Qwen2.5-0.5B's exact shape.
    Ingest {
        /// GSM8k train questions to run.
        #[arg(long, default_value_t = 64)]
        n: usize,
        #[arg(long, default_value = saerl_study::GSM8K_TRAIN)]
        data: PathBuf,
        #[arg(long, default_value = saerl_study::QWEN_TOKENIZER)]
        tokenizer: PathBuf,
        /// Keep (and reuse) the generated model in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Time decoder_drift.sql over a full-size synthetic chain.
    Sql {
        #[arg(long, default_value_t = 8)]
        stages: usize,
        #[arg(long, default_value_t = 896)]
        d_model: usize,
        #[arg(long, default_value_t = 7168)]
        d_sae: usize,
        #[arg(long, default_value_t = 64)]
        k: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Keep (and reuse) the generated lake in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let lake = Lake::new(&cli.lake);
    let result = match cli.command {
        Command::Init { path, force } => init::run(&path, force),
        Command::Ingest(args) => ingest::run(&lake, &args).map(|_| ()),
        Command::Import {
            what:
                ImportWhat::Pt {
                    path,
                    chain,
                    stage,
                    layer,
                    overwrite,
                },
        } => import::run(
            &lake,
            &import::ImportPt {
                path,
                chain,
                stage,
                layer,
                overwrite,
            },
        ),
        Command::Train(args) => train::run(&lake, &args),
        Command::Stats(args) => stats::run(&lake, &args),
        Command::Eval(args) => eval::run(&lake, &args),
        Command::Export {
            what: ExportWhat::Pt { out, chain },
        } => export::run(&lake, &out, chain.as_deref()),
        Command::Sql {
            command,
            file,
            format,
        } => {
            sql::run(
                &lake,
                sql::SqlArgs {
                    command,
                    file,
                    format,
                },
            )
            .await
        }
        Command::Plot { file, out } => plot::run(&lake, &file, &out).await,
        Command::Report { dir } => report::run(&lake, &dir)
            .await
            .map(|page| println!("wrote {}", page.display())),
        Command::Demo {
            out,
            data,
            tokenizer,
            prompts,
        } => {
            demo::run(&demo::DemoArgs {
                out,
                data,
                tokenizer,
                prompts,
            })
            .await
        }
        Command::Bench {
            what: BenchWhat::Train { steps },
        } => bench::train(steps),
        Command::Bench {
            what: BenchWhat::Stats { rows },
        } => bench::stats(rows),
        Command::Bench {
            what:
                BenchWhat::Ingest {
                    n,
                    data,
                    tokenizer,
                    keep,
                },
        } => bench::ingest(&bench::BenchIngest {
            n,
            data,
            tokenizer,
            keep,
        }),
        Command::Bench {
            what:
                BenchWhat::Sql {
                    stages,
                    d_model,
                    d_sae,
                    k,
                    runs,
                    keep,
                },
        } => {
            bench::sql(&bench::BenchSql {
                stages,
                d_model,
                d_sae,
                k,
                runs,
                keep,
            })
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

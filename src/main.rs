//! Command-line entry: parses arguments and hands over to `saerl::cli`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = saerl::cli::Cli::parse();
    match saerl::cli::run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", saerl::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

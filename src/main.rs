//! Command-line entry: everything, argument parsing included, is `saerl::cli::main`.

fn main() -> std::process::ExitCode {
    saerl::cli::main()
}

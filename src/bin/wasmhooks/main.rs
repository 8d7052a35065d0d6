//! The `wasmhooks` command. `cli` is the command line (clap; every flag has
//! an env var) and turns it into settings; each command is a file that runs
//! it on the library: `serve` (with `demo`, the sample events, and `systemd`,
//! readiness and reload), `run` (a dry
//! run), `check`, `deliveries` and `new` (a hook's folder from a template).
//! Logging is set up here, and only here.

mod check;
mod cli;
mod deliveries;
mod demo;
mod new;
mod run;
mod serve;
mod systemd;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Run(args) => run::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::New(args) => new::command(args).map(|()| ExitCode::SUCCESS),
            Command::Check(args) => check::check(args).await,
            Command::Deliveries(args) => deliveries::deliveries(args)
                .await
                .map(|()| ExitCode::SUCCESS),
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

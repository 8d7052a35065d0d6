//! The `wasmhooks` command. `cli` is the command line (clap; every flag has
//! an env var) and turns it into settings; each command is a file that runs
//! it on the library: `serve` (with `demo`, the sample events, and `systemd`,
//! readiness and reload), `run` (a dry
//! run), `check`, `test` (a hook's test cases), `deliveries`, `events` (the
//! archive), `simulate` (a new version over the archive), `new` (a hook's
//! folder from a template), `hooks` (a shared hooks bucket: `push`,
//! `engines`) and `sign` (`keygen`, `sign`, `verify`: signed
//! hooks).
//! Logging, and traces, are set up here (`telemetry`), and only here.

mod check;
mod cli;
mod deliveries;
mod demo;
mod events;
mod hooks;
mod new;
mod run;
mod serve;
mod sign;
mod simulate;
mod systemd;
mod telemetry;
mod test;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tracing = match &cli.command {
        Command::Serve(args) => args.tracing(),
        _ => None,
    };
    // Dropped last: what is left of the traces is exported at exit.
    let _flush = match telemetry::init(&cli.log, tracing.as_ref()) {
        Ok(flush) => flush,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Run(args) => run::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::New(args) => new::command(args).map(|()| ExitCode::SUCCESS),
            Command::Check(args) => check::check(args).await,
            Command::Test(args) => test::test(args).await,
            Command::Deliveries(args) => deliveries::deliveries(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Events(args) => events::events(args).await.map(|()| ExitCode::SUCCESS),
            Command::Simulate(args) => simulate::simulate(args).await,
            Command::Hooks(command) => hooks::hooks(command).await,
            Command::Keygen(args) => sign::keygen(args).map(|()| ExitCode::SUCCESS),
            Command::Sign(args) => sign::sign(args).map(|()| ExitCode::SUCCESS),
            Command::Verify(args) => sign::verify_hooks(args),
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

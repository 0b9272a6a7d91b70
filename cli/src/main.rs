//! `gannet`: the tenant and operator CLI.
//!
//! Data goes to stdout (a table, or JSON with `--json`); progress and errors
//! go to stderr. Exit 0 on success, 1 when the request was refused (fix the
//! input), 2 when the control API could not be reached or failed.

mod args;
mod client;
mod commands;
mod dev;
mod rollout;
mod settings;
mod settings_cmd;

use args::Cli;
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // `gannet dev` runs the control API in this process, which compiles
    // uploads by starting this binary as a compile worker: that runs and
    // exits here.
    gannet_control_api::compile_worker::dispatch();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .chain()
                .find_map(|c| c.downcast_ref::<client::ApiFailure>())
                .map_or(1, client::ApiFailure::exit_code);
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(code)
        }
    }
}

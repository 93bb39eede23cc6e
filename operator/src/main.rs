//! The `openmatch-gossip-operator` binary: `crdgen` prints or writes the CRD manifest, `run`
//! sets up logging and the async runtime and runs `app::run`. See `--help` and the README.

use std::process::ExitCode;

use clap::Parser as _;
use openmatch_gossip_crds::gossip_network::crd_yaml;
use openmatch_gossip_crds::runtime::init_logging;
use openmatch_gossip_operator::cli::{CRD_PATHS, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen(args) => {
            let yaml = crd_yaml();
            if !args.write {
                print!("{yaml}");
                return ExitCode::SUCCESS;
            }
            for rel in CRD_PATHS {
                let path = args.root.join(rel);
                let written =
                    path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&path, &yaml));
                if let Err(e) = written {
                    eprintln!("writing {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            init_logging(args.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(openmatch_gossip_operator::app::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

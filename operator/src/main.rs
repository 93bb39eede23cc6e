//! The `openmatch-gossip-operator` binary: `crdgen` prints or writes the CRD manifest,
//! `inject` and `render` do the webhook's and a reconcile's work on manifests
//! ([`openmatch_gossip_operator::offline`]), `run` sets up logging and the async runtime and
//! runs `app::run`. See `--help` and the README.

use std::process::ExitCode;

use clap::Parser as _;
use openmatch_gossip_crds::gossip_network::crd_yaml;
use openmatch_gossip_crds::runtime::init_logging;
use openmatch_gossip_operator::cli::{CRD_PATHS, Cli, Command, InjectArgs, RenderArgs};
use openmatch_gossip_operator::offline;

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
        Command::Inject(args) => or_fail(inject(&args)),
        Command::Render(args) => or_fail(render(&args)),
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

/// Exit status for `result`, printing the error to stderr.
fn or_fail(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `path`'s text; `-` is stdin.
fn read(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if path.as_os_str() == "-" {
        return std::io::read_to_string(std::io::stdin()).context("reading stdin");
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `inject`: the manifests on stdout, what was done on stderr.
fn inject(args: &InjectArgs) -> anyhow::Result<()> {
    let mut networks = Vec::new();
    for f in &args.network_files {
        networks.extend(offline::networks(&read(f)?)?);
    }
    let (out, notes) = offline::inject(&read(&args.file)?, &networks, &args.namespace, &args.sidecar.template())?;
    for n in notes {
        eprintln!("{n}");
    }
    print!("{out}");
    Ok(())
}

/// `render`: the ConfigMap on stdout, the peer set on stderr.
fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let mut networks = offline::networks(&read(&args.network_file)?)?;
    anyhow::ensure!(
        networks.len() == 1,
        "{}: expected one GossipNetwork, found {}",
        args.network_file.display(),
        networks.len()
    );
    let gn = networks.remove(0);
    let pods = match &args.pods {
        Some(p) => offline::pods(&read(p)?)?,
        None => Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let peer_ids = openmatch_gossip_operator::peer_ids::PeerIds::default();
    let (cm, peers) = runtime.block_on(offline::render(&gn, &pods, &peer_ids))?;
    eprintln!("bootstrap peers: {}", peers.addrs.len());
    for a in &peers.addrs {
        eprintln!("  {a}");
    }
    if !peers.not_ready.is_empty() {
        eprintln!("not ready: {}", peers.not_ready.join(", "));
    }
    for (pod, why) in &peers.without_peer_id {
        eprintln!("left out: {pod}: {why}");
    }
    print!("{}", offline::config_map_yaml(&cm));
    Ok(())
}

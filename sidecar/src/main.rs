//! `openmatch-gossip`: the sidecar node and its companion tools.

use clap::{Parser, Subcommand};
use openmatch_gossip_crds::runtime::{LogFormat, init_logging};
use openmatch_gossip_sidecar::tools::{bench, cluster, engine, relay, simulate};
use openmatch_gossip_sidecar::{config, identity, server};

/// openmatch-gossip: a libp2p gossip sidecar for replicated matching engines.
///
/// `node` runs the sidecar next to a matching engine: it gossips the engine's orders per
/// market over GossipSub (TCP + Noise + Yamux) and delivers the peers' orders to the engine
/// over a gRPC Unix socket, each exactly once. `cluster` is the main demo: three sidecars
/// and three reference engines replaying real Binance order flow.
#[derive(Parser)]
#[command(name = "openmatch-gossip", version, about, long_about)]
struct Cli {
    /// Tokio worker threads. 1 (the default) runs everything on one thread, so each hop
    /// inside the process is a queue push rather than a cross-thread wake-up: on 2 cores
    /// with 3 sidecars and 3 engines this gave ~1.6x the throughput of 2 workers.
    #[arg(long, global = true, env = "OPENMATCH_GOSSIP_WORKER_THREADS", default_value_t = 1)]
    worker_threads: usize,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sidecar node (what the pod's sidecar container runs).
    Node(config::NodeArgs),
    /// Benchmark baseline, not for production: the sidecar's libp2p swarm and socket API
    /// with no validation, dedup or consensus between them (the "stack floor" of `bench`).
    /// Takes the same flags as `node`.
    Relay(config::NodeArgs),
    /// Run the reference engine: replay the bundled Binance data through a sidecar and
    /// report what was sent and received (one JSON line on stdout).
    Engine(engine::EngineArgs),
    /// The main job: start N sidecars and N engines on loopback, replay the real data,
    /// print sent/received/missing/duplicates, orders/s and propagation latency. Exits
    /// non-zero if any order was lost, duplicated or altered.
    Cluster(cluster::ClusterArgs),
    /// Benchmark: the main job at maximum speed and at real pace, each beside a plain-TCP
    /// baseline between the same engines (and, at real pace, the stack floor of `relay`);
    /// prints a table of ratios.
    Bench(bench::BenchArgs),
    /// Benchmark: networks of 25, 50 and 100 real nodes in one process over libp2p's
    /// memory transport, each node replaying its shard of the recording at real pace;
    /// prints delivery ratio, agreed batches, amplification, duplicates, hops and latency
    /// per network size. Give it both cores: `--worker-threads 2`.
    Simulate(simulate::SimulateArgs),
    /// Print the peer id of an identity key file, creating the key if absent.
    PeerId {
        /// Key file path.
        path: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Cmd::Node(a) | Cmd::Relay(a) => a.log_format,
        _ => LogFormat::Pretty,
    };
    init_logging(format);
    let rt = if cli.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cli.worker_threads).enable_all().build()
    }
    .expect("tokio runtime");
    match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match cmd {
        Cmd::Node(args) => {
            let settings = config::NodeSettings::load_at_start(&args, config::START_CONFIG_WAIT).await?;
            let key = identity::load_or_create(&settings.identity_key)?;
            let running = server::start(settings, key).await?;
            if let Some(path) = args.config.clone() {
                let args = args.clone();
                running.watch_config(
                    path,
                    move || config::NodeSettings::from_args(&args),
                    openmatch_gossip_sidecar::reload::POLL_INTERVAL,
                );
            }
            let refused = tokio::select! {
                signal = wait_for_signal() => {
                    signal?;
                    None
                }
                reason = running.node.fatal() => Some(reason),
            };
            running.shutdown().await?;
            match refused {
                None => Ok(ExitCode::SUCCESS),
                Some(reason) => Err(anyhow::anyhow!(reason)),
            }
        }
        Cmd::Relay(args) => {
            let settings = config::NodeSettings::load_at_start(&args, config::START_CONFIG_WAIT).await?;
            let key = identity::load_or_create(&settings.identity_key)?;
            relay::run(settings, key, async {
                if let Err(e) = wait_for_signal().await {
                    tracing::error!(error = %e, "cannot wait for signals; stopping");
                }
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Engine(args) => {
            let report = engine::run(&args).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cluster(args) => {
            let binary = std::env::current_exe()?;
            let report = cluster::run(&args, &binary).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Bench(args) => {
            let binary = std::env::current_exe()?;
            let ok = bench::run(&args, &binary).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Simulate(args) => {
            let ok = simulate::run(&args).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::PeerId { path } => {
            let key = identity::load_or_create(&path)?;
            println!("{}", key.public().to_peer_id());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

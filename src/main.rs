//! The `runtimeuse` binary: flags in, server out. Everything else lives in
//! the library so it can be embedded.

use std::process::ExitCode;

use clap::Parser;
use runtimeuse::cli::{Cli, CliCommand};
use runtimeuse::server::Server;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    if let Some(code) = runtimeuse::init::reap_if_pid1() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    // The bundled echo handler runs as a hidden subcommand of the runtime
    // binary, so `--agent echo` needs nothing else installed.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            runtimeuse::handler_host::ECHO_SUBCOMMAND,
        ))
    {
        runtimeuse::echo::run();
        return ExitCode::SUCCESS;
    }
    let mut cli = Cli::parse();
    init_logging();
    if let Some(CliCommand::InstallAgent { agent, cache_dir }) = cli.command.take() {
        return install_agent(&agent, cache_dir.as_deref());
    }
    let config = cli.into_config();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runtimeuse: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runtimeuse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: runtimeuse::Config) -> anyhow::Result<()> {
    // Installed before the port opens: a SIGTERM the moment a supervisor
    // sees the port must already mean a graceful shutdown.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = Server::bind(config).await?;
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down: no new connections, cancelling running requests");
        shutdown.cancel();
    });
    tracing::info!(addr = %server.local_addr()?, "runtimeuse listening");
    server.run().await
}

/// `runtimeuse install-agent`: progress on stderr, each agent's directory
/// on stdout.
fn install_agent(which: &str, cache_dir: Option<&std::path::Path>) -> ExitCode {
    let cache = runtimeuse::embedded::CacheDirs::new(cache_dir);
    match runtimeuse::bundled::install_named(which, &cache) {
        Ok(installed) => {
            for (agent, copy) in installed {
                println!("{} {}", agent.name, copy.dir.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("runtimeuse: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter =
        EnvFilter::try_from_env("RUNTIMEUSE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(runtimeuse::logging::RedactingStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

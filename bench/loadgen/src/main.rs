//! `runtimeuse-bench`: the parts of `bench/run` that must not be the
//! bottleneck they measure.
//!
//! The orchestrator (`bench/bench.py`) decides what to run and computes the
//! ratios; this binary does the timing-critical work: the WebSocket client
//! for every wire figure, the floor servers (a minimal WebSocket echo server
//! and an HTTP server for uploads and downloads), and the floors that are
//! measured without any runtime (spawning, pipe copies, start-up).
//!
//! Usage: `runtimeuse-bench SUBCOMMAND key=value... [-- ARGV...]`. Every
//! subcommand prints one JSON object on stdout, including the CPU time this
//! process used, so the orchestrator can show the client was not saturated.

mod args;
mod floors;
mod procs;
mod serve;
mod ws;

use std::process::ExitCode;

use args::Args;

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let args = match Args::from_env() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("runtimeuse-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match args.subcommand.as_str() {
        "echo-server" => serve::echo_server(&args),
        "http-server" => serve::http_server(&args),
        "latency" => ws::latency(&args),
        "oneshot" => ws::oneshot(&args),
        "concurrent" => ws::concurrent(&args),
        "bigout" => ws::bigout(&args),
        "artifacts" => ws::artifacts(&args),
        "download" => ws::download(&args),
        "spawn-true" => floors::spawn_true(&args),
        "spawn-rate" => floors::spawn_rate(&args),
        "pipe" => floors::pipe(&args),
        "startup" => procs::startup(&args),
        other => Err(format!("unknown subcommand {other:?}")),
    };
    match outcome {
        Ok(mut report) => {
            report["client_cpu_ms"] = serde_json::json!(procs::own_cpu_ms());
            report["client_wall_ms"] = serde_json::json!(started.elapsed().as_secs_f64() * 1e3);
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("runtimeuse-bench {}: {e}", args.subcommand);
            ExitCode::FAILURE
        }
    }
}

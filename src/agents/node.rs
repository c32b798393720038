//! The bundled Node agents, `--agent openai` and `--agent claude`.
//!
//! Their sources (`handlers/openai`, `handlers/claude`), committed
//! `package-lock.json` files and the Node handler SDK they depend on
//! (`handlers/sdk/node`, by a relative `file:` path) are embedded in the
//! binary (`AGENT_HANDLERS` in [`crate::embedded`]). On first use an agent is
//! installed into the cache directory: the tree is unpacked and
//! `npm ci --omit=dev` runs in the agent's directory, with npm's progress on
//! stderr, before the port opens, so no query ever waits for it. The copy
//! is published atomically ([`crate::embedded`]), so the next start finds it
//! and calls neither npm nor the network. `runtimeuse install-agent` does
//! only this step, for baking agents into an image.
//!
//! Everything that can be checked at start-up is, with an error saying what
//! to do: Node missing or too old, npm missing, npm failing (its last lines
//! quoted), a cache directory that cannot be written. The API key is not:
//! it may come with each invocation's `agent_env`, so the handlers check it
//! per invocation.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::embedded::{AGENT_HANDLERS, CacheDirs, InstallError, Installed};
use crate::handler::{HandlerCommand, find_program};

/// A bundled agent that runs on Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeAgent {
    /// `--agent` name, and its directory under `handlers/`.
    pub(crate) name: &'static str,
    /// Oldest Node major version its SDK runs on.
    pub(crate) min_node_major: u32,
}

/// The Node agents, in `install-agent all` order. The OpenAI Agents SDK's
/// `openai` client declares Node >= 22 but runs on 20 (tested); the Claude
/// Agent SDK declares >= 18.
const NODE_AGENTS: &[NodeAgent] = &[
    NodeAgent {
        name: "openai",
        min_node_major: 20,
    },
    NodeAgent {
        name: "claude",
        min_node_major: 18,
    },
];

/// The handler's entry point, in its agent's directory.
const ENTRY: &str = "handler.mjs";
/// npm lines kept for an error message.
const NPM_TAIL_LINES: usize = 15;
/// Said by every error that is about Node, since only these agents need it.
const NO_NODE_NEEDED: &str = "--agent echo and --handler PATH need no Node";

/// Why a bundled agent cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentSetupError {
    /// `node` is not on `PATH`.
    #[error(
        "the {agent} agent needs Node.js >= {min} with npm, and `node` is not on PATH: \
         install Node.js {min} or newer (e.g. your distribution's nodejs and npm packages); {NO_NODE_NEEDED}"
    )]
    NoNode {
        /// The agent's name.
        agent: &'static str,
        /// Its minimum Node major version.
        min: u32,
    },
    /// `node --version` is below the agent's minimum (or unreadable).
    #[error(
        "the {agent} agent needs Node.js >= {min}, but {node} is {found}: \
         install Node.js {min} or newer; {NO_NODE_NEEDED}"
    )]
    OldNode {
        /// The agent's name.
        agent: &'static str,
        /// Its minimum Node major version.
        min: u32,
        /// The `node` that was found.
        node: PathBuf,
        /// What `node --version` said.
        found: String,
    },
    /// The agent is not installed and `npm` is not on `PATH`.
    #[error(
        "the {agent} agent is not installed yet and `npm` is not on PATH: install npm \
         (it comes with Node.js), or pre-install with `runtimeuse install-agent {agent}` \
         where npm is available; {NO_NODE_NEEDED}"
    )]
    NoNpm {
        /// The agent's name.
        agent: &'static str,
    },
    /// `npm ci` could not run or failed; the message quotes its last lines.
    #[error("{0}")]
    Npm(String),
    /// The cache directory could not be used.
    #[error("installing the {agent} agent: {source}")]
    Install {
        /// The agent's name.
        agent: &'static str,
        /// What went wrong.
        source: InstallError,
    },
}

/// The Node agent called `name`, if there is one.
pub(crate) fn node_agent(name: &str) -> Option<NodeAgent> {
    NODE_AGENTS.iter().copied().find(|a| a.name == name)
}

/// Makes `agent` ready to run (checking Node, installing on first use) and
/// returns the command that starts its handler.
pub(crate) fn prepare(
    agent: NodeAgent,
    cache: &CacheDirs,
) -> Result<HandlerCommand, AgentSetupError> {
    let node = check_node(agent)?;
    let installed = install(agent, cache)?;
    let entry = installed.dir.join("handlers").join(agent.name).join(ENTRY);
    Ok(HandlerCommand {
        program: node,
        args: vec![entry.display().to_string()],
        display: format!("{} (bundled)", agent.name),
        env: Vec::new(),
    })
}

/// `runtimeuse install-agent NAME`: installs `openai`, `claude` or `all`
/// (checking Node as a start would), returning each agent with its
/// directory.
pub(crate) fn install_named(
    which: &str,
    cache: &CacheDirs,
) -> Result<Vec<(NodeAgent, Installed)>, AgentSetupError> {
    NODE_AGENTS
        .iter()
        .filter(|agent| which == "all" || which == agent.name)
        .map(|&agent| {
            check_node(agent)?;
            Ok((agent, install(agent, cache)?))
        })
        .collect()
}

/// Installs `agent` into the cache unless it is there already.
fn install(agent: NodeAgent, cache: &CacheDirs) -> Result<Installed, AgentSetupError> {
    if let Some(dir) = AGENT_HANDLERS.installed(cache, agent.name) {
        tracing::debug!(agent = agent.name, dir = %dir.display(), "agent already installed");
        return Ok(Installed { dir, fresh: false });
    }
    let npm = find_program("npm").ok_or(AgentSetupError::NoNpm { agent: agent.name })?;
    let started = Instant::now();
    tracing::info!(
        agent = agent.name,
        "installing the {} agent's dependencies (npm ci --omit=dev; first start only)",
        agent.name
    );
    let installed = AGENT_HANDLERS
        .install(cache, agent.name, |staging| {
            npm_ci(agent, &npm, &staging.join("handlers").join(agent.name))
        })
        .map_err(|e| match e {
            InstallError::Prepare(message) => AgentSetupError::Npm(message),
            source => AgentSetupError::Install {
                agent: agent.name,
                source,
            },
        })?;
    tracing::info!(
        agent = agent.name,
        dir = %installed.dir.display(),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "agent installed"
    );
    Ok(installed)
}

/// Finds `node` and checks its version against the agent's minimum.
fn check_node(agent: NodeAgent) -> Result<PathBuf, AgentSetupError> {
    let node = find_program("node").ok_or(AgentSetupError::NoNode {
        agent: agent.name,
        min: agent.min_node_major,
    })?;
    let version = Command::new(&node)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    match node_major(&version) {
        Some(major) if major >= agent.min_node_major => Ok(node),
        _ => Err(AgentSetupError::OldNode {
            agent: agent.name,
            min: agent.min_node_major,
            node,
            found: if version.is_empty() {
                "unusable (`node --version` failed)".to_owned()
            } else {
                format!("version {version}")
            },
        }),
    }
}

/// The major version in `node --version` output (`v20.11.1` -> 20).
fn node_major(version: &str) -> Option<u32> {
    version.strip_prefix('v')?.split('.').next()?.parse().ok()
}

/// Runs `npm ci --omit=dev` in `dir`, passing its output to the log as it
/// comes; on failure, the error quotes its last lines.
fn npm_ci(agent: NodeAgent, npm: &Path, dir: &Path) -> Result<(), String> {
    let mut child = Command::new(npm)
        .args([
            "ci",
            "--omit=dev",
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--prefer-offline",
            "--loglevel=http",
        ])
        .current_dir(dir)
        .env_remove(crate::config::AUTH_TOKEN_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", npm.display()))?;
    let (lines, received) = mpsc::channel();
    let readers = [
        forward_lines(child.stdout.take(), lines.clone()),
        forward_lines(child.stderr.take(), lines),
    ];
    let mut tail = VecDeque::with_capacity(NPM_TAIL_LINES);
    for line in received.into_iter().filter(|l| !l.trim().is_empty()) {
        tracing::info!(target: "npm", agent = agent.name, "{line}");
        if tail.len() == NPM_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().map_err(|e| format!("waiting for npm: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.into_iter().map(|l| format!("  {l}")).collect();
    Err(format!(
        "installing the {} agent failed: `npm ci` {status}; its last lines:\n{}",
        agent.name,
        tail.join("\n")
    ))
}

/// Sends each line of `pipe` to `lines` from a thread of its own.
fn forward_lines<R: std::io::Read + Send + 'static>(
    pipe: Option<R>,
    lines: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(pipe) = pipe else {
            return;
        };
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else {
                break;
            };
            if lines.send(line).is_err() {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests;

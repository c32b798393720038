//! `runtimeuse check-handler PATH`: a conformance check a user runs on their
//! own handler, with no client.
//!
//! The handler is started exactly as `--handler PATH` starts it and driven
//! through the real [`HandlerHost`], one warm process for the whole run, by a
//! list of scenarios. Each prints one line (`PASS` / `FAIL`, name, what was
//! seen) and the run ends with `N passed, M failed`; the exit status is 0
//! only if every scenario passed.
//!
//! The scenarios send the prompts of `--agent echo` (`ECHO:`, `STRUCTURED:`,
//! `SLOW:`...). The first one is the probe: if the handler echoes it back,
//! it is an echo handler and every scenario is judged by **content** (the
//! exact text, structured output, stream, error, env value). Otherwise
//! scenarios it cannot be expected to understand are judged by **protocol
//! conformance** only: one well-formed terminal of the right kind, no stray
//! stdout, a cancel honoured within the grace, the process kept warm.
//! `--echo` insists on content judging (a broken echo handler then fails
//! instead of being judged leniently). See the README's "Write your own
//! handler" for the table.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::AgentSource;
use crate::handler::{
    AgentOutput, HandlerCommand, HandlerError, HandlerHost, Invocation, InvokeContext, SparePool,
};
use crate::outbox::Outbox;
use crate::redact::Redactor;
use crate::wire::{OutboundMessage, ResultData};

/// Check an agent handler against the handler protocol, with no client:
/// one line per scenario and a summary; exit 0 only if all pass.
#[derive(Debug, Parser)]
#[command(name = "runtimeuse check-handler", version, after_help = AFTER_HELP)]
struct Args {
    /// The handler, as you would pass it to --handler.
    #[arg(value_name = "PATH")]
    path: PathBuf,

    /// Judge every scenario by content, as an echo handler (default: only
    /// if it echoes the first prompt back).
    #[arg(long)]
    echo: bool,

    /// Longest wait for one invocation's answer (the first includes start-up).
    #[arg(long, default_value = "60s", value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    timeout: Duration,

    /// How long the handler may take to answer a cancel.
    #[arg(long, env = "RUNTIMEUSE_HANDLER_CANCEL_GRACE", default_value = "2s", value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    handler_cancel_grace: Duration,

    /// How long it may take to exit once stdin closes (then SIGTERM, SIGKILL).
    #[arg(long, env = "RUNTIMEUSE_KILL_GRACE", default_value = "2s", value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    kill_grace: Duration,

    /// Invocations sent in the "warm" scenario.
    #[arg(long, default_value_t = 10, value_name = "N")]
    invocations: usize,
}

const AFTER_HELP: &str = "\
The scenarios send the prompts of --agent echo (ECHO:, STRUCTURED:, SLOW:, ...).
A handler that echoes the first one back is judged by content; any other by
protocol conformance only (one well-formed terminal of the right kind, no
stray stdout, cancel honoured within the grace, warm process, exit on EOF).
With a model-backed handler every scenario is a real model call (about 20).
Set RUNTIMEUSE_LOG=info to see the handler's stderr.";

impl Args {
    fn options(&self) -> CheckOptions {
        CheckOptions {
            expect_echo: self.echo,
            timeout: self.timeout,
            cancel_grace: self.handler_cancel_grace,
            kill_grace: self.kill_grace,
            warm_invocations: self.invocations,
        }
    }
}

/// `runtimeuse check-handler ARGS...` (`args` are those after the
/// subcommand's name): the report on stdout, the runtime's log on stderr (the handler's
/// stderr too, with RUNTIMEUSE_LOG=info). Exit 0 if every scenario passed,
/// 1 if one failed, 2 if the handler cannot be started at all.
pub(crate) fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args =
        Args::parse_from(std::iter::once(OsString::from("runtimeuse check-handler")).chain(args));
    crate::logging::init(crate::logging::LogFormat::Text, "warn");
    let command = match HandlerCommand::resolve(&AgentSource::Path(args.path.clone())) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("runtimeuse: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runtimeuse: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = io::stdout().lock();
    match runtime.block_on(check(command, &args.options(), &mut stdout)) {
        Ok(report) if report.passed() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("runtimeuse: writing the report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How a check runs.
#[derive(Debug, Clone)]
struct CheckOptions {
    /// Judge by content even if the probe is not echoed.
    expect_echo: bool,
    /// Longest wait for one invocation's terminal (the first includes the
    /// handler's start-up, e.g. a build).
    timeout: Duration,
    /// How long the handler has to answer a cancel (as `--handler-cancel-grace`).
    cancel_grace: Duration,
    /// SIGTERM -> SIGKILL grace, and how long it has to exit on stdin EOF.
    kill_grace: Duration,
    /// Invocations in the "warm" scenario.
    warm_invocations: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            expect_echo: false,
            timeout: Duration::from_secs(60),
            cancel_grace: Duration::from_secs(2),
            kill_grace: Duration::from_secs(2),
            warm_invocations: 10,
        }
    }
}

/// How scenarios are judged (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judging {
    /// An echo handler: exact content.
    Content,
    /// Any handler: protocol conformance.
    Protocol,
}

/// One scenario's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    /// Short scenario name.
    scenario: &'static str,
    /// Whether it passed.
    passed: bool,
    /// What was seen (or expected and missed).
    detail: String,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Report {
    /// How the scenarios were judged.
    judging: Judging,
    /// One verdict per scenario, in order.
    verdicts: Vec<Verdict>,
}

impl Report {
    /// Whether every scenario passed.
    fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.passed)
    }
}

/// Runs every scenario against `command`, printing one line per scenario
/// (and a header and summary) to `out` as it goes.
async fn check(
    command: HandlerCommand,
    options: &CheckOptions,
    out: &mut impl Write,
) -> io::Result<Report> {
    writeln!(out, "checking agent handler {}", command.display)?;
    let mut checker = Checker::new(command, options.clone());
    let probe = checker.text().await;
    let judging = if options.expect_echo || probe.echoed {
        Judging::Content
    } else {
        Judging::Protocol
    };
    writeln!(out, "{}", judging_note(judging, options.expect_echo))?;
    let mut verdicts = Vec::new();
    record(judge_text(&probe, judging), &mut verdicts, out)?;
    for step in STEPS {
        let verdict = checker.step(step, judging).await;
        record(verdict, &mut verdicts, out)?;
    }
    record(checker.eof().await, &mut verdicts, out)?;
    let report = Report { judging, verdicts };
    let failed = report.verdicts.iter().filter(|v| !v.passed).count();
    writeln!(
        out,
        "{} passed, {failed} failed",
        report.verdicts.len() - failed
    )?;
    Ok(report)
}

/// Prints a verdict as soon as it is known (a slow scenario shows progress).
fn record(verdict: Verdict, verdicts: &mut Vec<Verdict>, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", verdict_line(&verdict))?;
    out.flush()?;
    verdicts.push(verdict);
    Ok(())
}

fn judging_note(judging: Judging, insisted: bool) -> &'static str {
    match (judging, insisted) {
        (Judging::Content, true) => "judged by content (--echo)",
        (Judging::Content, false) => "judged by content: the probe was echoed, an echo handler",
        (Judging::Protocol, _) => {
            "judged by protocol conformance: the probe was not echoed, not an echo handler \
             (pass --echo to insist)"
        }
    }
}

fn verdict_line(verdict: &Verdict) -> String {
    let status = if verdict.passed { "PASS" } else { "FAIL" };
    format!("{status}  {:<18} {}", verdict.scenario, verdict.detail)
}

/// The scenarios after the probe (`text`) and before `stdin EOF`, in order.
#[derive(Debug, Clone, Copy)]
enum Step {
    Structured,
    Streaming,
    Error,
    Cancel,
    Env,
    Secrets,
    Warm,
    StrayStdout,
}

const STEPS: [Step; 8] = [
    Step::Structured,
    Step::Streaming,
    Step::Error,
    Step::Cancel,
    Step::Env,
    Step::Secrets,
    Step::Warm,
    Step::StrayStdout,
];

/// What one invocation produced.
#[derive(Debug)]
struct Outcome {
    result: Result<AgentOutput, HandlerError>,
    /// The text blocks of each assistant message, in order.
    assistant: Vec<Vec<String>>,
    elapsed: Duration,
    /// The handler's pid before and after (None: none running).
    pid_before: Option<u32>,
    pid_after: Option<u32>,
    /// Whether the per-invocation timeout fired (and cancelled it).
    timed_out: bool,
    /// From the cancel to the outcome, when the scenario cancelled.
    after_cancel: Option<Duration>,
}

impl Outcome {
    fn text(&self) -> Option<&str> {
        match &self.result {
            Ok(AgentOutput {
                data: ResultData::Text { text },
                ..
            }) => Some(text),
            _ => None,
        }
    }

    /// Whether the process that answered is the one that was running before.
    fn stayed_warm(&self) -> bool {
        self.pid_before.is_none() || self.pid_before == self.pid_after
    }
}

/// The probe's outcome, and whether it was echoed.
struct Probe {
    outcome: Outcome,
    nonce: String,
    echoed: bool,
}

/// An invocation to send.
#[derive(Default)]
struct Request {
    prompt: String,
    env: BTreeMap<String, String>,
    secrets: Vec<String>,
    output_format: Option<Value>,
    /// Cancel this long after sending.
    cancel_after: Option<Duration>,
}

impl Request {
    fn prompt(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Self::default()
        }
    }
}

struct Checker {
    host: HandlerHost,
    options: CheckOptions,
    invocations: u64,
    nonce_seed: u64,
    /// Pid changes no scenario asked for (the host replaced the process).
    replaced: u32,
}

impl Checker {
    fn new(command: HandlerCommand, options: CheckOptions) -> Self {
        let nonce_seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        Self {
            host: HandlerHost::new(SparePool::none(Arc::new(command))),
            options,
            invocations: 0,
            nonce_seed,
            replaced: 0,
        }
    }

    async fn step(&mut self, step: Step, judging: Judging) -> Verdict {
        match step {
            Step::Structured => self.structured(judging).await,
            Step::Streaming => self.streaming(judging).await,
            Step::Error => self.error(judging).await,
            Step::Cancel => self.cancel(judging).await,
            Step::Env => self.env(judging).await,
            Step::Secrets => self.secrets(judging).await,
            Step::Warm => self.warm(judging).await,
            Step::StrayStdout => self.stray_stdout().await,
        }
    }

    fn nonce(&mut self, what: &str) -> String {
        self.nonce_seed = self
            .nonce_seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        format!("check-{what}-{:08x}", self.nonce_seed >> 32)
    }

    async fn send(&mut self, request: Request) -> Outcome {
        self.invocations += 1;
        let inv = Invocation {
            id: format!("check-{}", self.invocations),
            source_id: Some("runtimeuse-check-handler".into()),
            system_prompt: "You are being checked by runtimeuse check-handler.".into(),
            user_prompt: request.prompt,
            model: String::new(),
            output_format: request.output_format,
            env: request.env,
            secrets: request.secrets,
        };
        // Roomy enough for every scenario's stream: nothing reads it until
        // the invocation is over.
        let (outbox, mut sent) = Outbox::channel(1024);
        let cancel = CancellationToken::new();
        let cancelled_at = Arc::new(std::sync::Mutex::new(None));
        let canceller = spawn_canceller(
            cancel.clone(),
            request.cancel_after,
            self.options.timeout,
            cancelled_at.clone(),
        );
        let redactor = Redactor::default();
        let ctx = InvokeContext {
            outbox: &outbox,
            redactor: &redactor,
            cancel: &cancel,
            cancel_grace: self.options.cancel_grace,
            kill_grace: self.options.kill_grace,
        };
        let pid_before = self.host.pid();
        let start = Instant::now();
        let result = self.host.invoke(&inv, &ctx).await;
        let elapsed = start.elapsed();
        canceller.abort();
        let pid_after = self.host.pid();
        let cancelled_at = *cancelled_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut assistant = Vec::new();
        while let Ok(message) = sent.try_recv() {
            if let OutboundMessage::AssistantMessage { text_blocks } = message {
                assistant.push(text_blocks);
            }
        }
        let timed_out = matches!(cancelled_at, Some((_, CancelReason::Timeout)));
        Outcome {
            result,
            assistant,
            elapsed,
            pid_before,
            pid_after,
            timed_out,
            after_cancel: cancelled_at.map(|(at, _)| at.elapsed()),
        }
    }

    /// Sends a request, counting a process replaced under it.
    async fn run(&mut self, request: Request) -> Outcome {
        let expect_cancel = request.cancel_after.is_some();
        let outcome = self.send(request).await;
        if outcome.pid_before.is_some() && !outcome.stayed_warm() && !expect_cancel {
            self.replaced += 1;
        }
        outcome
    }

    async fn text(&mut self) -> Probe {
        let nonce = self.nonce("text");
        let outcome = self.run(Request::prompt(format!("ECHO:{nonce}"))).await;
        let echoed = outcome.text() == Some(nonce.as_str());
        Probe {
            outcome,
            nonce,
            echoed,
        }
    }

    async fn structured(&mut self, judging: Judging) -> Verdict {
        let nonce = self.nonce("structured");
        let object = json!({"answer": nonce, "items": [1, 2, {"nested": true}], "none": null});
        let schema = json!({"type": "json_schema", "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
        }});
        let outcome = self
            .run(Request {
                prompt: format!("STRUCTURED:{object}"),
                output_format: Some(schema),
                ..Request::default()
            })
            .await;
        judge_structured(&outcome, judging, &object)
    }

    async fn streaming(&mut self, judging: Judging) -> Verdict {
        let outcome = self.run(Request::prompt("STREAM:3")).await;
        judge_streaming(&outcome, judging)
    }

    async fn error(&mut self, judging: Judging) -> Verdict {
        let nonce = self.nonce("error");
        let outcome = self.run(Request::prompt(format!("ERROR:{nonce}"))).await;
        judge_error(&outcome, judging, &nonce)
    }

    async fn cancel(&mut self, judging: Judging) -> Verdict {
        let outcome = self
            .run(Request {
                prompt: "SLOW:60000".into(),
                cancel_after: Some(CANCEL_AFTER),
                ..Request::default()
            })
            .await;
        judge_cancel(&outcome, judging, self.options.cancel_grace)
    }

    async fn env(&mut self, judging: Judging) -> Verdict {
        let value = self.nonce("env");
        let outcome = self
            .run(Request {
                prompt: format!("ENV:{ENV_NAME}"),
                env: BTreeMap::from([(ENV_NAME.to_owned(), value.clone())]),
                ..Request::default()
            })
            .await;
        judge_env(&outcome, judging, &value)
    }

    async fn secrets(&mut self, judging: Judging) -> Verdict {
        let secret = self.nonce("secret");
        let outcome = self
            .run(Request {
                prompt: format!("ECHO:the token is {secret}"),
                secrets: vec![secret.clone()],
                ..Request::default()
            })
            .await;
        judge_secrets(&outcome, judging, &secret)
    }

    async fn warm(&mut self, judging: Judging) -> Verdict {
        let count = self.options.warm_invocations.max(1);
        let pid = self.host.pid();
        let mut total = Duration::ZERO;
        for i in 0..count {
            let expected = format!("warm {i} of {count}");
            let outcome = self.run(Request::prompt(format!("ECHO:{expected}"))).await;
            total += outcome.elapsed;
            if let Some(problem) = failure(&outcome) {
                return fail(
                    "warm",
                    format!("invocation {} of {count}: {problem}", i + 1),
                );
            }
            if pid.is_some() && outcome.pid_after != pid {
                return fail(
                    "warm",
                    format!(
                        "invocation {} of {count} ran in a new process: keep serving invocations \
                         on one process, reading stdin until EOF",
                        i + 1
                    ),
                );
            }
            if judging == Judging::Content && outcome.text() != Some(expected.as_str()) {
                return fail(
                    "warm",
                    format!(
                        "invocation {}: expected text {expected:?}, got {}",
                        i + 1,
                        describe(&outcome)
                    ),
                );
            }
        }
        let mean = total / u32::try_from(count).unwrap_or(u32::MAX);
        pass(
            "warm",
            format!(
                "{count} invocations on one process, {} mean round trip",
                millis(mean)
            ),
        )
    }

    async fn stray_stdout(&mut self) -> Verdict {
        // Whatever the handler writes after a terminal is read before the
        // next invocation; give late writes a moment to arrive.
        tokio::time::sleep(QUIET_WINDOW).await;
        let prompt = format!("ECHO:{}", self.nonce("quiet"));
        let outcome = self.run(Request::prompt(prompt)).await;
        if let Some(problem) = failure(&outcome) {
            return fail("stray stdout", problem);
        }
        if self.replaced > 0 {
            return fail(
                "stray stdout",
                format!(
                    "the process was replaced {} time(s) between invocations: it wrote \
                     something other than protocol lines to stdout after a terminal, or exited \
                     (run with RUNTIMEUSE_LOG=info to see why)",
                    self.replaced
                ),
            );
        }
        pass(
            "stray stdout",
            "stdout carried protocol lines only, before, between and after invocations".into(),
        )
    }

    /// Closes stdin and sees whether the handler exits by itself.
    async fn eof(&mut self) -> Verdict {
        let grace = self.options.kill_grace;
        if self.host.pid().is_none() {
            return fail(
                "stdin EOF",
                "no handler process was running to close".into(),
            );
        }
        let start = Instant::now();
        if self.host.shutdown(grace).await {
            pass(
                "stdin EOF",
                format!("exited {} after stdin closed", millis(start.elapsed())),
            )
        } else {
            fail(
                "stdin EOF",
                format!(
                    "still running {grace:?} after stdin closed: the runtime terminates such a \
                     handler; exit when stdin reaches EOF"
                ),
            )
        }
    }
}

/// How long after the invoke the cancel scenario cancels.
const CANCEL_AFTER: Duration = Duration::from_millis(300);
/// Pause before the stray-stdout scenario's invocation.
const QUIET_WINDOW: Duration = Duration::from_millis(300);
/// The env scenario's variable.
const ENV_NAME: &str = "RUNTIMEUSE_CHECK_ENV";

#[derive(Debug, Clone, Copy)]
enum CancelReason {
    Scenario,
    Timeout,
}

/// Fires `cancel` after `cancel_after` (the scenario's cancel) or after
/// `timeout` (the invocation took too long), recording when and why.
fn spawn_canceller(
    cancel: CancellationToken,
    cancel_after: Option<Duration>,
    timeout: Duration,
    fired: Arc<std::sync::Mutex<Option<(Instant, CancelReason)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (delay, reason) = match cancel_after {
            Some(after) if after < timeout => (after, CancelReason::Scenario),
            _ => (timeout, CancelReason::Timeout),
        };
        tokio::time::sleep(delay).await;
        *fired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), reason));
        cancel.cancel();
    })
}

fn pass(scenario: &'static str, detail: String) -> Verdict {
    Verdict {
        scenario,
        passed: true,
        detail,
    }
}

fn fail(scenario: &'static str, detail: String) -> Verdict {
    Verdict {
        scenario,
        passed: false,
        detail,
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// Why an outcome is a failure whatever the judging: no answer in time, a
/// crash or a protocol violation. None for a result or a reported error.
fn failure(outcome: &Outcome) -> Option<String> {
    if outcome.timed_out {
        return Some(
            "no terminal within the timeout (--timeout); the invocation was cancelled".into(),
        );
    }
    match &outcome.result {
        Ok(_) | Err(HandlerError::Reported { .. }) => None,
        Err(HandlerError::Failed(why)) => Some(why.clone()),
        Err(HandlerError::Cancelled) => Some("cancelled".into()),
        Err(HandlerError::ClientGone) => Some("the output channel closed".into()),
    }
}

/// One line of what an outcome was, for messages.
fn describe(outcome: &Outcome) -> String {
    match &outcome.result {
        Ok(AgentOutput {
            data: ResultData::Text { text },
            ..
        }) => format!("text {:?}", shorten(text)),
        Ok(AgentOutput {
            data: ResultData::StructuredOutput { structured_output },
            ..
        }) => format!(
            "structured output {}",
            shorten(&Value::Object(structured_output.clone()).to_string())
        ),
        Err(HandlerError::Reported { error, .. }) => format!("error {:?}", shorten(error)),
        Err(other) => other.to_string(),
    }
}

fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    if text.chars().count() <= MAX {
        return text.to_owned();
    }
    let cut: String = text.chars().take(MAX).collect();
    format!("{cut}...")
}

/// A reported error in protocol judging: conformant, noted.
fn conformant_error(outcome: &Outcome) -> Option<String> {
    match &outcome.result {
        Err(HandlerError::Reported { error, .. }) => Some(format!(
            "answered with an error ({:?}): conformant; content not judged",
            shorten(error)
        )),
        _ => None,
    }
}

fn judge_text(probe: &Probe, judging: Judging) -> Verdict {
    const NAME: &str = "text";
    let outcome = &probe.outcome;
    if let Some(problem) = failure(outcome) {
        return fail(NAME, problem);
    }
    let took = format!("{}, start-up included", millis(outcome.elapsed));
    match judging {
        Judging::Content if probe.echoed => {
            pass(NAME, format!("echoed {:?} ({took})", probe.nonce))
        }
        Judging::Content => fail(
            NAME,
            format!(
                "ECHO:{} should answer text {:?}, got {}",
                probe.nonce,
                probe.nonce,
                describe(outcome)
            ),
        ),
        Judging::Protocol => match (outcome.text(), conformant_error(outcome)) {
            (Some(_), _) => pass(NAME, format!("answered with text ({took})")),
            (None, Some(note)) => pass(NAME, note),
            (None, None) => fail(
                NAME,
                format!(
                    "no output format was asked for, so the answer must be text; got {}",
                    describe(outcome)
                ),
            ),
        },
    }
}

fn judge_structured(outcome: &Outcome, judging: Judging, expected: &Value) -> Verdict {
    const NAME: &str = "structured output";
    if let Some(problem) = failure(outcome) {
        return fail(NAME, problem);
    }
    let got = match &outcome.result {
        Ok(AgentOutput {
            data: ResultData::StructuredOutput { structured_output },
            ..
        }) => Some(Value::Object(structured_output.clone())),
        _ => None,
    };
    match (judging, got) {
        (Judging::Content, Some(got)) if &got == expected => {
            pass(NAME, "the JSON object came back as structured_output".into())
        }
        (Judging::Content, _) => fail(
            NAME,
            format!("expected structured output {expected}, got {}", describe(outcome)),
        ),
        (Judging::Protocol, Some(_)) => pass(NAME, "answered with a structured_output object".into()),
        (Judging::Protocol, None) => conformant_error(outcome).map_or_else(
            || {
                fail(
                    NAME,
                    format!(
                        "an output format was asked for, so the answer must be structured_output; got {}",
                        describe(outcome)
                    ),
                )
            },
            |note| pass(NAME, note),
        ),
    }
}

fn judge_streaming(outcome: &Outcome, judging: Judging) -> Verdict {
    const NAME: &str = "streaming";
    if let Some(problem) = failure(outcome) {
        return fail(NAME, problem);
    }
    let streamed = outcome.assistant.len();
    if judging == Judging::Protocol {
        return pass(
            NAME,
            format!("{streamed} assistant message(s) before the terminal"),
        );
    }
    let expected: Vec<Vec<String>> = (1..=3).map(|i| vec![format!("message {i} of 3")]).collect();
    if outcome.assistant == expected && outcome.text() == Some("streamed 3 messages") {
        pass(
            NAME,
            "3 assistant messages, in order, then the result".into(),
        )
    } else {
        fail(
            NAME,
            format!(
                "STREAM:3 should stream {expected:?} then text \"streamed 3 messages\"; got {:?} then {}",
                outcome.assistant,
                describe(outcome)
            ),
        )
    }
}

fn judge_error(outcome: &Outcome, judging: Judging, nonce: &str) -> Verdict {
    const NAME: &str = "error";
    if let Some(problem) = failure(outcome) {
        return fail(NAME, problem);
    }
    if !outcome.stayed_warm() {
        return fail(
            NAME,
            "the process exited after its terminal: stay running for the next invocation".into(),
        );
    }
    match (judging, &outcome.result) {
        (Judging::Protocol, _) => pass(
            NAME,
            "one terminal, process kept warm (content not judged)".into(),
        ),
        (Judging::Content, Err(HandlerError::Reported { error, .. })) if error == nonce => {
            pass(NAME, "reported as one error, process kept warm".into())
        }
        (Judging::Content, _) => fail(
            NAME,
            format!(
                "ERROR:{nonce} should be an error {nonce:?}, got {}",
                describe(outcome)
            ),
        ),
    }
}

fn judge_cancel(outcome: &Outcome, judging: Judging, grace: Duration) -> Verdict {
    const NAME: &str = "cancel";
    if outcome.timed_out || matches!(outcome.result, Err(HandlerError::Failed(_))) {
        return fail(NAME, failure(outcome).unwrap_or_default());
    }
    let Some(after_cancel) = outcome.after_cancel else {
        // It finished before the cancel was sent.
        return match (judging, failure(outcome)) {
            (_, Some(problem)) => fail(NAME, problem),
            (Judging::Content, None) => fail(
                NAME,
                format!(
                    "SLOW:60000 should still be running when cancelled; got {}",
                    describe(outcome)
                ),
            ),
            (Judging::Protocol, None) => pass(
                NAME,
                "finished before the cancel was sent (not judged)".into(),
            ),
        };
    };
    match &outcome.result {
        Err(HandlerError::Cancelled) if outcome.stayed_warm() && outcome.pid_after.is_some() => {
            pass(
                NAME,
                format!(
                    "answered the cancel in {}, process kept warm",
                    millis(after_cancel)
                ),
            )
        }
        Err(HandlerError::Cancelled) => fail(
            NAME,
            format!(
                "did not answer the cancel within {:?}: the runtime terminated it. Keep reading stdin \
                 while working and answer a cancel with a terminal",
                grace
            ),
        ),
        _ => fail(
            NAME,
            format!("expected the cancel to end it, got {}", describe(outcome)),
        ),
    }
}

fn judge_env(outcome: &Outcome, judging: Judging, value: &str) -> Verdict {
    const NAME: &str = "env";
    if let Some(problem) = failure(outcome) {
        return fail(NAME, problem);
    }
    match judging {
        Judging::Protocol => pass(NAME, "one terminal (content not judged)".into()),
        Judging::Content if outcome.text() == Some(value) => pass(
            NAME,
            format!("the invocation's env reached the handler ({ENV_NAME})"),
        ),
        Judging::Content => fail(
            NAME,
            format!(
                "ENV:{ENV_NAME} should answer the env value {value:?}, got {}",
                describe(outcome)
            ),
        ),
    }
}

fn judge_secrets(outcome: &Outcome, judging: Judging, secret: &str) -> Verdict {
    const NAME: &str = "secrets";
    if let Some(problem) = failure(outcome) {
        return fail(NAME, problem);
    }
    if format!("{:?} {:?}", outcome.result, outcome.assistant).contains(secret) {
        return fail(NAME, "the secret came back unredacted".into());
    }
    match judging {
        Judging::Protocol => pass(NAME, "nothing sent back carried the secret".into()),
        Judging::Content if outcome.text() == Some("the token is [REDACTED]") => {
            pass(NAME, "the secret was echoed and came back redacted".into())
        }
        Judging::Content => fail(
            NAME,
            format!(
                "expected text \"the token is [REDACTED]\", got {}",
                describe(outcome)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn outcome(result: Result<AgentOutput, HandlerError>) -> Outcome {
        Outcome {
            result,
            assistant: Vec::new(),
            elapsed: Duration::from_millis(1),
            pid_before: Some(10),
            pid_after: Some(10),
            timed_out: false,
            after_cancel: None,
        }
    }

    fn text(text: &str) -> Result<AgentOutput, HandlerError> {
        Ok(AgentOutput {
            data: ResultData::Text { text: text.into() },
            metadata: Map::new(),
        })
    }

    fn reported(error: &str) -> Result<AgentOutput, HandlerError> {
        Err(HandlerError::Reported {
            error: error.into(),
            metadata: Map::new(),
        })
    }

    #[test]
    fn a_protocol_violation_fails_whatever_the_judging() {
        let broken = outcome(Err(HandlerError::Failed(
            "agent handler x wrote a line that is not a JSON object: \"hello\"".into(),
        )));
        for judging in [Judging::Content, Judging::Protocol] {
            let verdict = judge_env(&broken, judging, "v");
            assert!(!verdict.passed);
            assert!(verdict.detail.contains("not a JSON object"), "{verdict:?}");
        }
    }

    #[test]
    fn an_error_answer_is_conformant_but_not_an_echo() {
        let answered = outcome(reported("no API key"));
        let verdict = judge_structured(&answered, Judging::Protocol, &json!({}));
        assert!(
            verdict.passed && verdict.detail.contains("no API key"),
            "{verdict:?}"
        );
        assert!(!judge_structured(&answered, Judging::Content, &json!({})).passed);
    }

    #[test]
    fn text_where_structured_output_was_asked_fails_conformance() {
        let verdict = judge_structured(&outcome(text("{}")), Judging::Protocol, &json!({}));
        assert!(!verdict.passed && verdict.detail.contains("must be structured_output"));
    }

    #[test]
    fn streaming_content_must_match_exactly() {
        let mut streamed = outcome(text("streamed 3 messages"));
        streamed.assistant = (1..=3).map(|i| vec![format!("message {i} of 3")]).collect();
        assert!(judge_streaming(&streamed, Judging::Content).passed);
        streamed.assistant.swap(0, 1);
        assert!(!judge_streaming(&streamed, Judging::Content).passed);
        assert!(judge_streaming(&streamed, Judging::Protocol).passed);
    }

    #[test]
    fn a_cancel_is_honoured_only_if_the_process_stayed_warm() {
        let mut cancelled = outcome(Err(HandlerError::Cancelled));
        cancelled.after_cancel = Some(Duration::from_millis(5));
        assert!(judge_cancel(&cancelled, Judging::Content, Duration::from_secs(2)).passed);
        cancelled.pid_after = None;
        let verdict = judge_cancel(&cancelled, Judging::Protocol, Duration::from_secs(2));
        assert!(
            !verdict.passed && verdict.detail.contains("terminated it"),
            "{verdict:?}"
        );
    }

    #[test]
    fn finishing_before_the_cancel_passes_only_a_non_echo_handler() {
        let quick = outcome(text("done"));
        assert!(judge_cancel(&quick, Judging::Protocol, Duration::from_secs(2)).passed);
        assert!(!judge_cancel(&quick, Judging::Content, Duration::from_secs(2)).passed);
    }

    #[test]
    fn an_error_that_ends_the_process_fails() {
        let mut died = outcome(reported("check-error-1"));
        died.pid_after = None;
        assert!(!judge_error(&died, Judging::Content, "check-error-1").passed);
        died.pid_after = Some(10);
        assert!(judge_error(&died, Judging::Content, "check-error-1").passed);
    }

    #[test]
    fn a_secret_sent_back_in_clear_fails() {
        let leaked = outcome(text("the token is s3cr3t-value"));
        assert!(!judge_secrets(&leaked, Judging::Protocol, "s3cr3t-value").passed);
        let redacted = outcome(text("the token is [REDACTED]"));
        assert!(judge_secrets(&redacted, Judging::Content, "s3cr3t-value").passed);
    }

    #[test]
    fn a_timeout_is_reported_as_such() {
        let mut slow = outcome(Err(HandlerError::Cancelled));
        slow.timed_out = true;
        let verdict = judge_env(&slow, Judging::Protocol, "v");
        assert!(!verdict.passed && verdict.detail.contains("--timeout"));
    }

    #[test]
    fn flags() {
        let args = Args::parse_from([
            "runtimeuse check-handler",
            "--echo",
            "--timeout",
            "5s",
            "./h.sh",
        ]);
        assert_eq!(args.path, PathBuf::from("./h.sh"));
        let options = args.options();
        assert!(options.expect_echo);
        assert_eq!(options.timeout, Duration::from_secs(5));
        assert_eq!(options.warm_invocations, 10);
        assert!(Args::try_parse_from(["runtimeuse check-handler"]).is_err());
    }

    #[test]
    fn lines_and_summary_are_stable() {
        assert_eq!(
            verdict_line(&pass("env", "ok".into())),
            "PASS  env                ok"
        );
    }
}

//! Processes: start-up to port open, resident memory, and this process's
//! own CPU time.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::args::Args;

/// How often the port is tried while a program starts.
const POLL: Duration = Duration::from_micros(200);
/// Longest a program may take to open its port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// CPU time (user + system) this process has used, in milliseconds.
pub fn own_cpu_ms() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Starts `argv` (`{port}` replaced) `runs` times and times each start to
/// the moment its port accepts a connection. After the last run, waits
/// `rss_after_ms` and reports the resident memory of the program and of
/// each of its descendants (e.g. a spare handler) separately.
pub fn startup(args: &Args) -> Result<Value, String> {
    let port: u16 = args.get("port")?;
    let runs: usize = args.get_or("runs", 1)?;
    let rss_after = Duration::from_millis(args.get_or("rss_after_ms", 0)?);
    let argv: Vec<String> = args
        .argv
        .iter()
        .map(|a| a.replace("{port}", &port.to_string()))
        .collect();
    let (program, rest) = argv.split_first().ok_or("missing -- PROGRAM ...")?;
    let mut samples = Vec::with_capacity(runs);
    let mut memory = Value::Null;
    for run in 0..runs {
        let t = Instant::now();
        let mut child = Command::new(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let opened = wait_for_port(port, &mut child);
        samples.push(t.elapsed().as_micros() as u64);
        if opened.is_ok() && run + 1 == runs && !rss_after.is_zero() {
            std::thread::sleep(rss_after);
            memory = memory_of(child.id());
        }
        stop_group(&mut child);
        opened?;
    }
    Ok(json!({"samples_us": samples, "memory": memory}))
}

fn wait_for_port(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before opening its port: {status}"));
        }
        if Instant::now() > deadline {
            return Err("did not open its port in time".into());
        }
        std::thread::sleep(POLL);
    }
}

/// SIGTERM to the whole group, SIGKILL if it is still there after 5 s.
fn stop_group(child: &mut Child) {
    let pgid = child.id() as libc::pid_t;
    // SAFETY: signals the group this process created for the child.
    unsafe { libc::killpg(pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            // SAFETY: as above; whatever the leader left behind goes too.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: as above.
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    let _ = child.wait();
}

/// `VmRSS` of a process, in KiB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and every process below it.
fn tree_of(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        tree.extend(children_of(tree[next]));
        next += 1;
    }
    tree
}

/// Nanoseconds of CPU a process's threads have run, from `schedstat`.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until `pid` and its descendants have used no CPU for `window`
/// (a spare handler has finished starting, a session's teardown is over),
/// at most `limit`. Returns whether they went quiet.
pub fn wait_quiet(pid: u32, window: Duration, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let total = || tree_of(pid).into_iter().map(cpu_ns).sum::<u64>();
    let mut last = total();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        let now = total();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= window {
            return true;
        }
    }
    false
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The program's own RSS, and each descendant's with its command line.
fn memory_of(pid: u32) -> Value {
    let mut descendants = Vec::new();
    let mut stack = children_of(pid);
    while let Some(child) = stack.pop() {
        stack.extend(children_of(child));
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        descendants.push(json!({"pid": child, "cmdline": cmdline.trim_end(),
                                "rss_kb": rss_kb(child)}));
    }
    json!({"rss_kb": rss_kb(pid), "descendants": descendants})
}

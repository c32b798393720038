//! Floors measured without any runtime: what this machine's kernel costs
//! for the work the runtime is asked to do.

use std::ffi::{CStr, c_char};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use crate::args::Args;

unsafe extern "C" {
    static environ: *const *mut c_char;
}

/// `posix_spawn` of `/bin/sh -c script` (stdout to `stdout_fd` if given),
/// then `waitpid`: the least a command round trip can cost.
fn spawn_and_wait(script: &CStr, stdout_fd: Option<i32>) -> Result<(), String> {
    let argv = [
        c"sh".as_ptr(),
        c"-c".as_ptr(),
        script.as_ptr(),
        std::ptr::null(),
    ];
    let mut pid: libc::pid_t = 0;
    // SAFETY: the file actions are initialised before use and destroyed
    // after; argv is NULL-terminated and outlives the call; environ is the
    // process environment.
    let rc = unsafe {
        let mut actions = std::mem::zeroed::<libc::posix_spawn_file_actions_t>();
        libc::posix_spawn_file_actions_init(&mut actions);
        if let Some(fd) = stdout_fd {
            libc::posix_spawn_file_actions_adddup2(&mut actions, fd, 1);
        }
        let rc = libc::posix_spawn(
            &mut pid,
            c"/bin/sh".as_ptr(),
            &actions,
            std::ptr::null(),
            argv.as_ptr().cast(),
            environ.cast(),
        );
        libc::posix_spawn_file_actions_destroy(&mut actions);
        rc
    };
    if rc != 0 {
        return Err(format!("posix_spawn: error {rc}"));
    }
    let mut status = 0;
    // SAFETY: waits for the child just spawned; status is a valid int.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(())
}

/// `n` sequential spawn + wait of `/bin/sh -c true`, one sample each.
pub fn spawn_true(args: &Args) -> Result<Value, String> {
    let n: usize = args.get("n")?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        spawn_and_wait(c"true", None)?;
        samples.push(t.elapsed().as_micros() as u64);
    }
    Ok(json!({"samples_us": samples}))
}

/// How fast the machine spawns and reaps `sh -c 'echo hi'` with every core
/// busy: one thread per core, `per` spawns each.
pub fn spawn_rate(args: &Args) -> Result<Value, String> {
    let per: usize = args.get("per")?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers: usize = args.get_or("workers", cores)?;
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| e.to_string())?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&devnull);
    let t = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            std::thread::spawn(move || {
                (0..per).try_for_each(|_| spawn_and_wait(c"echo hi", Some(fd)))
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "a spawning thread panicked")??;
    }
    let seconds = t.elapsed().as_secs_f64();
    Ok(json!({"workers": workers, "spawns": workers * per,
              "per_s": (workers * per) as f64 / seconds}))
}

/// The producer the output figures run, read straight from its pipe in
/// 64 KiB reads: the most a runtime could stream.
pub fn pipe(args: &Args) -> Result<Value, String> {
    let mb: u64 = args.get("mb")?;
    let script = format!("head -c {} /dev/zero | tr '\\0' a", mb << 20);
    let t = Instant::now();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) => return Err(e.to_string()),
        }
    }
    child.wait().map_err(|e| e.to_string())?;
    Ok(json!({"seconds": t.elapsed().as_secs_f64(), "bytes": bytes}))
}

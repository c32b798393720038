fn main() {
    // The bundled echo handler runs as a hidden subcommand of the runtime
    // binary, so `--agent echo` needs nothing else installed.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            runtimeuse::handler_host::ECHO_SUBCOMMAND,
        ))
    {
        runtimeuse::echo::run();
    }
}

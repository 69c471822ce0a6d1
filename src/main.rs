//! The `tim` binary: server and client CLI. Parses flags, sets up logging, and calls the
//! library; `tim bench` and `tim chaos` run the `tim-bench` and `tim-chaos` tools.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod cli;

/// jemalloc rather than glibc's malloc: a node allocates and frees small buffers per message on
/// every worker thread, where glibc's malloc/free took ~13% of a node's CPU samples. jemalloc
/// runs 5% fewer instructions per message and keeps an idle stream's RSS where it was; mimalloc
/// ran 6% fewer but added ~19 KiB of RSS per idle stream (BENCHMARKS.md, issue 12).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "tim", version, about = "tim: distributed instant messaging over gRPC")]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object a line, with
    /// the span fields: a session's user, device and session id) for log shippers.
    #[arg(long, global = true, env = "TIM_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<tim::Config>),
    /// Log in, send one message, print its seq once it is stored.
    Send(cli::SendArgs),
    /// Interactive chat: prints `<from>: <body>` (`[<group>] <from>: <body>` for a group), sends
    /// lines typed as `<to>: <text>` or `#<group id>: <text>`.
    Chat(cli::ChatArgs),
    /// Prints a conversation (direct or a group) oldest first, as `[seq] from: body`.
    History(cli::HistoryArgs),
    /// Lists the user's conversations, most recently active first: `<id> <title> unread=<N>`
    /// and the last message.
    Conversations(cli::ConversationsArgs),
    /// Marks a conversation (`--with` a user or `--group`) read up to its newest message (or
    /// `--up-to`), for all the user's devices; prints `read=<seq>`.
    Read(cli::ReadArgs),
    /// Creates a group (prints `group=<ID>` last), adds or removes members.
    Group(cli::GroupArgs),
    /// Start nodes and Redis, drive users while killing and restarting them, check delivery
    /// (runs `tim-chaos`; `tim chaos --help` for its flags).
    #[command(disable_help_flag = true)]
    Chaos(cli::ToolArgs),
    /// Load generator: start node(s), measure throughput, latency, CPU and RSS against
    /// baselines; the last line sums it up (runs `tim-bench`; `tim bench --help` for its flags).
    #[command(disable_help_flag = true)]
    Bench(cli::ToolArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => cli::serve(*config).await,
            Command::Send(args) => cli::send(args).await,
            Command::Chat(args) => cli::chat(args).await,
            Command::History(args) => cli::history(args).await,
            Command::Conversations(args) => cli::conversations(args).await,
            Command::Read(args) => cli::read(args).await,
            Command::Group(args) => cli::group(args).await,
            Command::Chaos(args) => cli::forward("tim-chaos", args).await,
            Command::Bench(args) => cli::forward("tim-bench", args).await,
        }
    });
    // `tim chat` may leave a blocking stdin read behind: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<cli::ToolFailed>() {
            // The tool said why itself.
            Some(failed) => ExitCode::from(failed.code),
            None => {
                eprintln!("tim: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

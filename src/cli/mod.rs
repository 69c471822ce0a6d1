//! The CLI subcommands: thin wrappers over the library.
use std::error::Error;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;
use tokio::io::AsyncBufReadExt as _;

use tim::client::resilient::{Client, ClientEvent, Config, Handle};
use tim::client::{self, Options};
use tim::proto::{self, gateway_client::GatewayClient};

mod conversations;
mod group;

use conversations::signal_line;
pub use conversations::{conversations, read};
use group::text;
pub use group::{GroupArgs, group};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// Who to log in as, and where.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Gateway address (any node).
    #[arg(long, env = "TIM_GATEWAY", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// User id (dev login), or the JWT's subject.
    #[arg(long, env = "TIM_USER")]
    pub user: String,
    #[arg(long, env = "TIM_DEVICE", default_value = "cli")]
    pub device: String,
    /// HS256 JWT, for nodes in `--login jwt` mode.
    #[arg(long, env = "TIM_JWT", default_value = "", hide_env_values = true)]
    pub jwt: String,
    /// PEM CA certificate(s) to trust instead of the system's roots; implies TLS for a bare
    /// host:port. `https://host:port` alone uses the system's roots.
    #[arg(long, env = "TIM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for nodes that ask for one (`--tls-client-ca`).
    #[arg(long, env = "TIM_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, env = "TIM_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl LoginArgs {
    /// Client options with the TLS settings these arguments ask for.
    fn options(&self) -> Result<Options> {
        let mut opts = Options::default();
        if self.tls_ca.is_some() || self.client_cert.is_some() {
            let tls = client::ClientTls::from_files(
                self.tls_ca.as_deref(),
                self.client_cert.as_deref(),
                self.client_key.as_deref(),
            )?;
            opts.tls = Some(tls);
        }
        Ok(opts)
    }
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub login: LoginArgs,
    /// Recipient user id.
    #[arg(long, required_unless_present = "group", conflicts_with = "group")]
    pub to: Option<String>,
    /// A group's id (`g:...`, as `tim group create` printed it), instead of --to.
    #[arg(long)]
    pub group: Option<String>,
    /// Message body (the new text, with --edit; none with --delete or --recall).
    #[arg(default_value = "")]
    pub body: String,
    /// Replace the text of your message with this conversation seq.
    #[arg(long, value_name = "SEQ", conflicts_with_all = ["delete", "recall"])]
    pub edit: Option<u64>,
    /// Delete the message with this conversation seq for everyone (yours, or any as a group
    /// admin).
    #[arg(long, value_name = "SEQ", conflicts_with = "recall")]
    pub delete: Option<u64>,
    /// Recall your message with this conversation seq (within the node's --recall-window).
    #[arg(long, value_name = "SEQ")]
    pub recall: Option<u64>,
}

impl SendArgs {
    /// The change this send makes to an earlier message, if any.
    fn change(&self) -> Option<proto::Change> {
        use proto::change::Kind;
        let (kind, target_seq) = match (self.edit, self.delete, self.recall) {
            (Some(seq), _, _) => (Kind::Edit, seq),
            (_, Some(seq), _) => (Kind::Delete, seq),
            (_, _, Some(seq)) => (Kind::Recall, seq),
            _ => return None,
        };
        Some(proto::Change { kind: kind.into(), target_seq })
    }
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub login: LoginArgs,
    /// The other user of the direct conversation to print.
    #[arg(long, required_unless_present = "group", conflicts_with = "group")]
    pub with: Option<String>,
    /// A group's id, instead of --with.
    #[arg(long)]
    pub group: Option<String>,
    /// Print only the newest N messages (default: all the history keeps).
    #[arg(long)]
    pub last: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub login: LoginArgs,
    /// The other user of the direct conversation to mark read.
    #[arg(long, required_unless_present = "group", conflicts_with = "group")]
    pub with: Option<String>,
    /// A group's id, instead of --with.
    #[arg(long)]
    pub group: Option<String>,
    /// Read up to this conversation seq (default: the newest).
    #[arg(long, default_value_t = 0)]
    pub up_to: u64,
}

#[derive(Debug, Args)]
pub struct ConversationsArgs {
    #[command(flatten)]
    pub login: LoginArgs,
    /// Print at most N conversations (default: all).
    #[arg(long)]
    pub last: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub login: LoginArgs,
    /// Resume after this seq (default: after the device's stored ack cursor).
    #[arg(long, default_value_t = 0)]
    pub resume_after: u64,
}

/// The arguments of a subcommand that another executable runs, passed on untouched.
#[derive(Debug, Args)]
pub struct ToolArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// A forwarded tool exited with a failure status (it printed why itself).
#[derive(Debug, thiserror::Error)]
#[error("{tool} exited with status {code}")]
pub struct ToolFailed {
    pub tool: &'static str,
    pub code: u8,
}

/// Runs `tool` git-style: the executable of that name beside this one, else on PATH, with
/// `args`; fails with [`ToolFailed`] carrying its exit status.
pub async fn forward(tool: &'static str, args: ToolArgs) -> Result<()> {
    // Ctrl-C reaches the tool too; tim waits for it to finish instead of dying first.
    #[cfg(unix)]
    let _sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    let file = format!("{tool}{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()?.with_file_name(&file);
    let program = if beside.is_file() { beside.clone() } else { PathBuf::from(&file) };
    let run = move || std::process::Command::new(&program).args(&args.args).status();
    match tokio::task::spawn_blocking(run).await? {
        Ok(status) if status.success() => Ok(()),
        // Killed by a signal: no code of its own.
        Ok(status) => Err(ToolFailed {
            tool,
            code: status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1),
        }
        .into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "`tim {}` runs {file}, which is neither at {} nor on PATH: build it with \
             `cargo build --release` in tim's workspace (it goes beside tim)",
            tool.trim_start_matches("tim-"),
            beside.display()
        )
        .into()),
        Err(e) => Err(format!("cannot run {file}: {e}").into()),
    }
}

/// Binds the listener, then runs the node until SIGINT or SIGTERM.
pub async fn serve(config: tim::Config) -> Result<()> {
    let config = config.read_secret_files()?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    tim::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub async fn send(args: SendArgs) -> Result<()> {
    let l = &args.login;
    let opts = l.options()?;
    let login = client::login(&l.addr, &l.user, &l.device, &l.jwt, &opts).await?;
    let mut gw = GatewayClient::new(client::channel(&l.addr, &opts).await?);
    let req = proto::SendRequest {
        client_msg_id: tim::ids::new_id(),
        change: args.change(),
        to: args.to.unwrap_or_default(),
        body: args.body,
        group: args.group.unwrap_or_default(),
    };
    let ack = gw
        .send(client::authorized(req, &login.token))
        .await
        .map_err(client::ClientError::from)?
        .into_inner();
    println!("seq={} msg_id={}", ack.seq, ack.msg_id);
    Ok(())
}

/// Prints a conversation oldest first as `[conv_seq] from: body`, paging back from the newest.
pub async fn history(args: HistoryArgs) -> Result<()> {
    let l = &args.login;
    let opts = l.options()?;
    let login = client::login(&l.addr, &l.user, &l.device, &l.jwt, &opts).await?;
    let mut gw = GatewayClient::new(client::channel(&l.addr, &opts).await?);
    let want = args.last.unwrap_or(usize::MAX);
    let mut pages: Vec<Vec<proto::Message>> = Vec::new();
    let (mut before, mut got) = (0, 0);
    while got < want {
        let limit = (want - got).min(tim::node::MAX_HISTORY_PAGE) as u32;
        let req = proto::HistoryRequest {
            with: args.with.clone().unwrap_or_default(),
            conversation: args.group.clone().unwrap_or_default(),
            before_seq: before,
            limit,
            ..Default::default()
        };
        let page = gw
            .history(client::authorized(req, &login.token))
            .await
            .map_err(client::ClientError::from)?
            .into_inner()
            .messages;
        let Some(first) = page.first() else { break };
        before = first.conv_seq;
        got += page.len();
        pages.push(page);
        if before <= 1 {
            break;
        }
    }
    for m in pages.into_iter().rev().flatten() {
        println!("[{}] {}: {}", m.conv_seq, m.from, text(&m));
    }
    Ok(())
}

pub async fn chat(args: ChatArgs) -> Result<()> {
    let l = &args.login;
    let mut config = Config::new(vec![l.addr.clone()], &l.user, &l.device);
    config.jwt = l.jwt.clone();
    config.options = l.options()?;
    config.resume_after = args.resume_after;
    let mut client = Client::start(config);
    let handle = client.handle();
    // What this process sent: their copies (which reach every device of the user once it has
    // another) are not printed again here.
    let mut sent = std::collections::HashSet::new();
    // Sends run one at a time, in the order typed; stdin EOF ends the loop after the last ack.
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if lines_tx.send(line).await.is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            line = lines_rx.recv() => match line {
                Some(line) => {
                    if let Some(id) = send_line(&handle, &line).await {
                        sent.insert(id);
                    }
                }
                None => {
                    handle.flush().await;
                    return Ok(());
                }
            },
            event = client.next_event() => match event {
                Some(ClientEvent::Message(m)) => {
                    let group = m.conversation.strip_prefix("g:").is_some();
                    let own = m.from == l.user && (group || m.to != l.user);
                    if own && sent.remove(&m.client_msg_id) {
                        // Printed when it was typed here.
                    } else if group {
                        println!("[{}] {}: {}", m.conversation, m.from, text(&m));
                    } else if own {
                        println!("{} (you) -> {}: {}", m.from, m.to, m.body);
                    } else {
                        println!("{}: {}", m.from, m.body);
                    }
                    handle.ack_message(&m).await?;
                }
                Some(ClientEvent::Connected { node_id, unread, .. }) => {
                    eprintln!("connected as {}/{} to {node_id}; type `<to>: <text>` or `#<group id>: <text>`", l.user, l.device);
                    if let Some((total, conversations)) = unread.filter(|u| u.0 > 0) {
                        let s = if conversations == 1 { "" } else { "s" };
                        eprintln!("({total} unread in {conversations} conversation{s})");
                    }
                }
                Some(ClientEvent::Disconnected { reason }) => eprintln!("disconnected ({reason}); reconnecting"),
                Some(ClientEvent::Kicked(reason)) => return Err(format!("kicked: {reason}").into()),
                Some(ClientEvent::LoggedOut(reason)) => return Err(format!("logged out: {reason}").into()),
                Some(ClientEvent::Gap { first, last }) => eprintln!("(messages {first} to {last} expired before they reached this device)"),
                Some(ClientEvent::Signal(s)) => signal_line(&l.user, &s),
                None => return Err("client stopped".into()),
            },
        }
    }
}

/// Sends one typed line; the client_msg_id of what was stored.
async fn send_line(sender: &Handle, line: &str) -> Option<String> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    // `#<group id>: text` for a group (its id holds ':' itself), `<to>: text` for a user.
    let split = match line.strip_prefix('#') {
        Some(rest) => rest.split_once(": ").map(|(g, t)| (g, t, true)),
        None => line.split_once(':').map(|(to, t)| (to, t, false)),
    };
    let Some((to, text, group)) = split else {
        eprintln!("type `<to>: <text>` or `#<group id>: <text>`");
        return None;
    };
    let sent = match group {
        true => sender.send_to_group(to.trim(), text.trim()).await,
        false => sender.send(to.trim(), text.trim()).await,
    };
    match sent {
        Ok(ack) => {
            eprintln!("(sent to {}, seq {})", to.trim(), ack.seq);
            Some(ack.client_msg_id)
        }
        Err(e) => {
            eprintln!("not sent: {e}");
            None
        }
    }
}

//! `tim conversations` and `tim read`, and what `tim chat` shows of signals.
use tim::client;
use tim::proto::{self, gateway_client::GatewayClient};

use super::{ConversationsArgs, ReadArgs, Result, text};

/// What `tim chat` shows of a signal: `(bob is typing in <conv>)`, `✓✓ bob read <conv> up to N`.
pub(super) fn signal_line(me: &str, s: &proto::Signal) {
    use proto::signal::Kind;
    match s.kind() {
        Kind::Typing => eprintln!("({} is typing in {})", s.user_id, s.conversation),
        Kind::Read if s.user_id != me => {
            println!("✓✓ {} read {} up to {}", s.user_id, s.conversation, s.conv_seq)
        }
        _ => {}
    }
}

/// Marks a conversation read for all the user's devices; prints `read=<seq>`.
pub async fn read(args: ReadArgs) -> Result<()> {
    let l = &args.login;
    let opts = l.options()?;
    let login = client::login(&l.addr, &l.user, &l.device, &l.jwt, &opts).await?;
    let mut gw = GatewayClient::new(client::channel(&l.addr, &opts).await?);
    let req = proto::MarkReadRequest {
        with: args.with.clone().unwrap_or_default(),
        conversation: args.group.clone().unwrap_or_default(),
        conv_seq: args.up_to,
    };
    let reply = gw.mark_read(client::authorized(req, &login.token)).await;
    let reply = reply.map_err(client::ClientError::from)?.into_inner();
    println!("read={}", reply.read_seq);
    Ok(())
}

/// Prints the user's conversations, most recently active first, one a line:
/// `<id> <title> unread=<N> read=<seq>` and, when there is one, ` | [<seq>] from: body` of the last message.
pub async fn conversations(args: ConversationsArgs) -> Result<()> {
    let l = &args.login;
    let opts = l.options()?;
    let login = client::login(&l.addr, &l.user, &l.device, &l.jwt, &opts).await?;
    let mut gw = GatewayClient::new(client::channel(&l.addr, &opts).await?);
    let (want, mut got, mut page_token) = (args.last.unwrap_or(usize::MAX), 0, String::new());
    while got < want {
        let limit = (want - got).min(tim::node::MAX_CONVERSATIONS_PAGE) as u32;
        let req = proto::ListConversationsRequest { limit, page_token };
        let page = gw
            .list_conversations(client::authorized(req, &login.token))
            .await
            .map_err(client::ClientError::from)?
            .into_inner();
        for c in &page.conversations {
            let last = match &c.last_message {
                Some(m) => format!(" | [{}] {}: {}", m.conv_seq, m.from, text(m)),
                None => String::new(),
            };
            println!("{} {} unread={} read={}{last}", c.id, c.title, c.unread, c.read_seq);
        }
        got += page.conversations.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(())
}

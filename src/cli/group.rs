//! `tim group`: create a group, add and remove members; and how a group event reads.
use clap::Args;

use super::{LoginArgs, Result};
use tim::client;
use tim::proto;

#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// Creates a group owned by --user; the last line printed is `group=<ID>`.
    Create {
        #[command(flatten)]
        login: LoginArgs,
        /// Members besides --user, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "")]
        members: Vec<String>,
        #[arg(long)]
        name: String,
        /// Members who join later may read what was said before.
        #[arg(long)]
        history_for_new_members: bool,
    },
    /// Adds members (as the owner or an admin).
    Add(MembersArgs),
    /// Removes members (as the owner or an admin).
    Remove(MembersArgs),
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub login: LoginArgs,
    #[arg(long)]
    pub group: String,
    /// Comma-separated user ids.
    #[arg(long, value_delimiter = ',')]
    pub users: Vec<String>,
}

/// A message's text: its body (as History's latest change left it), or what its event says.
pub(super) fn text(m: &proto::Message) -> String {
    use proto::group_event::Kind;
    let Some(e) = &m.event else {
        return match (m.changed_by, m.body.is_empty()) {
            (0, _) => m.body.clone(),
            (_, true) => "(deleted)".to_string(),
            (_, false) => format!("{} (edited)", m.body),
        };
    };
    let users = e.users.join(", ");
    match Kind::try_from(e.kind) {
        Ok(Kind::Created) => format!("(created {:?})", e.name),
        Ok(Kind::Joined) => format!("(added {users})"),
        Ok(Kind::Left) => format!("({users} left)"),
        Ok(Kind::Removed) => format!("(removed {users})"),
        Ok(Kind::Renamed) => format!("(renamed the group {:?})", e.name),
        Ok(Kind::RoleChanged) => format!("(made {users} {})", e.name),
        Ok(Kind::Edited) => format!("(edited [{}]: {})", e.target_seq, m.body),
        Ok(Kind::Deleted) => format!("(deleted [{}])", e.target_seq),
        Ok(Kind::Recalled) => format!("(recalled [{}])", e.target_seq),
        _ => "(changed the group)".to_string(),
    }
}

pub async fn group(args: GroupArgs) -> Result<()> {
    use proto::groups_client::GroupsClient;
    let (login, add, members) = match &args.command {
        GroupCommand::Create { login, .. } => (login, true, None),
        GroupCommand::Add(m) => (&m.login, true, Some(m)),
        GroupCommand::Remove(m) => (&m.login, false, Some(m)),
    };
    let opts = login.options()?;
    let session = client::login(&login.addr, &login.user, &login.device, &login.jwt, &opts).await?;
    let mut gc = GroupsClient::new(client::channel(&login.addr, &opts).await?);
    let reply = match (&args.command, members) {
        (GroupCommand::Create { members, name, history_for_new_members, .. }, _) => {
            let req = proto::CreateGroupRequest {
                name: name.clone(),
                members: members.iter().filter(|m| !m.is_empty()).cloned().collect(),
                history_for_new_members: *history_for_new_members,
            };
            gc.create_group(client::authorized(req, &session.token)).await
        }
        (_, Some(m)) => {
            let req =
                proto::ChangeMembersRequest { group: m.group.clone(), users: m.users.clone() };
            let req = client::authorized(req, &session.token);
            if add { gc.add_members(req).await } else { gc.remove_members(req).await }
        }
        (_, None) => unreachable!("add and remove carry their members"),
    };
    let group = reply.map_err(client::ClientError::from)?.into_inner().group.unwrap_or_default();
    eprintln!("{} ({} members)", group.name, group.member_count);
    println!("group={}", group.id);
    Ok(())
}

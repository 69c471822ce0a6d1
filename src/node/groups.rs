//! Groups: create, add, remove, leave and read a group, and send into one. A change or a
//! message is logged once in the group's conversation, then appended to every member's inbox
//! (the sender's only for their other devices) and pushed, before the caller is answered.
use std::time::SystemTime;

use crate::auth::{Claims, unix_ms};
use crate::error::Error;
use crate::ids::{self, Conversation};
use crate::proto;
use crate::store::groups::{Delivered, GroupChange, GroupEvent, Limits, MAX_CHANGED_USERS, Role};
use crate::store::{Appended, NewMessage, Outgoing, StoreError, StoredMessage};

use super::Node;

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 128;
/// Members one GetGroup page holds at most, and without a limit.
const MAX_MEMBER_PAGE: usize = 1000;
const DEFAULT_MEMBER_PAGE: usize = 100;

impl Node {
    /// Creates a group owned by `caller`, with `members` besides them.
    pub async fn create_group(
        &self,
        caller: &Claims,
        req: proto::CreateGroupRequest,
    ) -> Result<proto::GroupResponse, Error> {
        check_name(&req.name)?;
        self.check_users(&req.members)?;
        let id = Conversation::Group(ids::new_id()).id();
        let change = GroupChange::Create {
            name: req.name,
            members: req.members,
            history_for_new_members: req.history_for_new_members,
        };
        self.change_group(caller, &id, change).await
    }

    /// Adds (`add`) or removes users, as `caller` (owner or admin).
    pub async fn change_members(
        &self,
        caller: &Claims,
        req: proto::ChangeMembersRequest,
        add: bool,
    ) -> Result<proto::GroupResponse, Error> {
        let id = group_id(&req.group)?;
        if req.users.is_empty() || req.users.len() > MAX_CHANGED_USERS {
            return Err(Error::invalid(format!(
                "name 1 to {MAX_CHANGED_USERS} users a call (their event is copied to every member)"
            )));
        }
        self.check_users(&req.users)?;
        let change = if add { GroupChange::Add(req.users) } else { GroupChange::Remove(req.users) };
        self.change_group(caller, &id, change).await
    }

    /// `caller` leaves the group.
    pub async fn leave_group(
        &self,
        caller: &Claims,
        req: proto::LeaveGroupRequest,
    ) -> Result<proto::GroupResponse, Error> {
        let id = group_id(&req.group)?;
        self.change_group(caller, &id, GroupChange::Leave).await
    }

    /// Gives a member another role, as the owner.
    pub async fn set_role(
        &self,
        caller: &Claims,
        req: proto::SetRoleRequest,
    ) -> Result<proto::GroupResponse, Error> {
        let id = group_id(&req.group)?;
        ids::user(&req.user).map_err(|e| Error::invalid(format!("user: {e}")))?;
        let role = proto::Role::try_from(req.role).ok().and_then(|r| Role::try_from(r).ok());
        let role = role.ok_or_else(|| Error::invalid("role must be MEMBER, ADMIN or OWNER"))?;
        self.change_group(caller, &id, GroupChange::SetRole(req.user, role)).await
    }

    /// Renames the group, as its owner or an admin.
    pub async fn rename_group(
        &self,
        caller: &Claims,
        req: proto::RenameGroupRequest,
    ) -> Result<proto::GroupResponse, Error> {
        let id = group_id(&req.group)?;
        check_name(&req.name)?;
        self.change_group(caller, &id, GroupChange::Rename(req.name)).await
    }

    /// The group and a page of its members, for a member.
    pub async fn get_group(
        &self,
        caller: &str,
        req: proto::GetGroupRequest,
    ) -> Result<proto::GetGroupResponse, Error> {
        self.take_allowance(caller, "retry later")?;
        let id = group_id(&req.group)?;
        if self.groups.member(&id, caller).await?.is_none() {
            return Err(StoreError::NotMember.into());
        }
        let info = self.groups.group(&id).await?.ok_or(StoreError::NotMember)?;
        let limit = match req.limit {
            0 => DEFAULT_MEMBER_PAGE,
            n => (n as usize).min(MAX_MEMBER_PAGE),
        };
        let members = self.groups.members(&id, &req.after, limit).await?;
        Ok(proto::GetGroupResponse {
            group: Some(info.into()),
            members: members.into_iter().map(Into::into).collect(),
        })
    }

    /// Stores a message from `from`'s `device` into the group `msg.group`: logged (members
    /// only), then in every member's inbox, then pushed.
    pub(super) async fn send_to_group(
        &self,
        from: &str,
        device: &str,
        msg: Outgoing,
        event: Option<GroupEvent>,
    ) -> Result<Appended, Error> {
        let id = group_id(&msg.group)?;
        let logged = self
            .groups
            .log_group_message(
                NewMessage {
                    from: from.to_string(),
                    origin_device: device.to_string(),
                    to: String::new(),
                    conversation: id,
                    client_msg_id: msg.client_msg_id,
                    body: msg.body,
                    msg_id: ids::new_id(),
                    sent_at: unix_ms(SystemTime::now()),
                    event,
                },
                self.config.group_fanout_limit,
            )
            .await?;
        if logged.broadcast() {
            // Nothing per member: the fan-out mark goes, then the push.
            self.groups.deliver_group(&logged.message, device, &[]).await?;
            self.broadcast(&logged.message, logged.version).await;
        } else {
            self.deliver_to_members(&logged.message, device, &logged.members).await?;
        }
        let message = logged.message;
        Ok(Appended { message, duplicate: logged.duplicate, routes: Vec::new(), copy: None })
    }

    async fn change_group(
        &self,
        caller: &Claims,
        id: &str,
        change: GroupChange,
    ) -> Result<proto::GroupResponse, Error> {
        self.take_allowance(&caller.sub, "retry later")?;
        let event = NewMessage {
            from: caller.sub.clone(),
            origin_device: caller.dev.clone(),
            to: String::new(),
            conversation: id.to_string(),
            client_msg_id: ids::new_id(),
            body: String::new(),
            msg_id: ids::new_id(),
            sent_at: unix_ms(SystemTime::now()),
            event: None,
        };
        let limits = Limits {
            max_members: self.config.group_max_members,
            fanout: self.config.group_fanout_limit,
        };
        let changed = self.groups.change_group(event, change, limits).await?;
        let mut event_seq = 0;
        if let Some(event) = &changed.event {
            event_seq = event.conv_seq;
            if changed.broadcast() {
                self.groups.deliver_group(event, &caller.dev, &[]).await?;
                self.broadcast(event, changed.version).await;
            } else {
                let mut to = changed.members.clone();
                to.extend(changed.removed.iter().cloned());
                self.deliver_to_members(event, &caller.dev, &to).await?;
            }
        }
        let info = self.groups.group(id).await?.ok_or(StoreError::NotMember)?;
        Ok(proto::GroupResponse { group: Some(info.into()), event_seq })
    }

    /// Appends a logged group message to `members`' inboxes and pushes what was appended.
    async fn deliver_to_members(
        &self,
        message: &StoredMessage,
        origin_device: &str,
        members: &[String],
    ) -> Result<(), Error> {
        let delivered = self.groups.deliver_group(message, origin_device, members).await?;
        for Delivered { user, message, routes } in &delivered {
            self.push_if_offline(user, message, routes);
            self.delivery.fan_out(user, message, routes);
        }
        Ok(())
    }

    fn check_users(&self, users: &[String]) -> Result<(), Error> {
        let max = self.config.group_max_members as usize;
        if users.len() > max {
            return Err(StoreError::GroupFull { max: max as u32 }.into());
        }
        for u in users {
            ids::user(u).map_err(|e| Error::invalid(format!("member {u:?}: {e}")))?;
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME {
        return Err(Error::invalid(format!("a group name is 1 to {MAX_GROUP_NAME} bytes")));
    }
    Ok(())
}

/// A group's conversation id, checked.
fn group_id(id: &str) -> Result<String, Error> {
    match Conversation::parse(id)? {
        Conversation::Group(_) => Ok(id.to_string()),
        Conversation::Direct(..) => Err(Error::invalid(format!("{id:?} is not a group"))),
    }
}

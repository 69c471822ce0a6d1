//! Conversions between the wire (`im.v1` protobuf types) and the domain types of the library, in
//! both directions, in one place. Handlers, sessions and the relay convert through here only.
use tonic::Status;

use crate::proto;
use crate::store::groups::{EventKind, GroupEvent, GroupInfo, Member, Role};
use crate::store::{Appended, Outgoing, StoredMessage};

impl From<StoredMessage> for proto::Message {
    fn from(m: StoredMessage) -> Self {
        proto::Message {
            seq: m.seq,
            from: m.from,
            to: m.to,
            body: m.body,
            sent_at: m.sent_at,
            msg_id: m.msg_id,
            conversation: m.conversation,
            conv_seq: m.conv_seq,
            client_msg_id: m.client_msg_id,
            event: m.event.map(Into::into),
            changed_by: 0,
        }
    }
}

impl From<proto::Message> for StoredMessage {
    fn from(m: proto::Message) -> Self {
        StoredMessage {
            seq: m.seq,
            msg_id: m.msg_id,
            from: m.from,
            to: m.to,
            body: m.body,
            sent_at: m.sent_at,
            conversation: m.conversation,
            conv_seq: m.conv_seq,
            client_msg_id: m.client_msg_id,
            event: m.event.and_then(|e| e.try_into().ok()),
        }
    }
}

impl From<GroupEvent> for proto::GroupEvent {
    fn from(e: GroupEvent) -> Self {
        match e.target() {
            Some(target_seq) => proto::GroupEvent {
                kind: e.kind as i32,
                users: e.users,
                name: String::new(),
                target_seq,
            },
            None => proto::GroupEvent {
                kind: e.kind as i32,
                users: e.users,
                name: e.name,
                target_seq: 0,
            },
        }
    }
}

impl TryFrom<proto::GroupEvent> for GroupEvent {
    type Error = ();

    fn try_from(e: proto::GroupEvent) -> Result<Self, ()> {
        let kind = EventKind::from_number(e.kind.into()).ok_or(())?;
        if kind.changes_a_message() {
            return Ok(GroupEvent::change(kind, e.target_seq));
        }
        Ok(GroupEvent { kind, users: e.users, name: e.name })
    }
}

impl From<GroupInfo> for proto::GroupInfo {
    fn from(g: GroupInfo) -> Self {
        proto::GroupInfo {
            id: g.id,
            name: g.name,
            owner: g.owner,
            member_count: g.member_count,
            history_for_new_members: g.history_for_new_members,
            created_at: g.created_at,
            broadcast_from: g.broadcast_from,
        }
    }
}

impl From<Role> for proto::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Member => proto::Role::Member,
            Role::Admin => proto::Role::Admin,
            Role::Owner => proto::Role::Owner,
        }
    }
}

impl TryFrom<proto::Role> for Role {
    type Error = ();

    /// ROLE_UNSPECIFIED is no role.
    fn try_from(r: proto::Role) -> Result<Self, ()> {
        match r {
            proto::Role::Member => Ok(Role::Member),
            proto::Role::Admin => Ok(Role::Admin),
            proto::Role::Owner => Ok(Role::Owner),
            proto::Role::Unspecified => Err(()),
        }
    }
}

impl From<Member> for proto::Member {
    fn from(m: Member) -> Self {
        let role = proto::Role::from(m.role) as i32;
        proto::Member { user_id: m.user, role, joined_seq: m.joined_seq }
    }
}

impl From<proto::SendMessage> for Outgoing {
    fn from(m: proto::SendMessage) -> Self {
        let change = m.change.map(change_of);
        Outgoing { client_msg_id: m.client_msg_id, to: m.to, body: m.body, group: m.group, change }
    }
}

impl From<proto::SendRequest> for Outgoing {
    fn from(m: proto::SendRequest) -> Self {
        let change = m.change.map(change_of);
        Outgoing { client_msg_id: m.client_msg_id, to: m.to, body: m.body, group: m.group, change }
    }
}

/// A Send's change as the event it is logged as (an unknown kind: EDITED with target 0, which
/// the node refuses as naming no message).
fn change_of(c: proto::Change) -> (EventKind, u64) {
    use proto::change::Kind;
    let kind = match c.kind() {
        Kind::Delete => EventKind::Deleted,
        Kind::Recall => EventKind::Recalled,
        Kind::Edit => EventKind::Edited,
        Kind::Unspecified => return (EventKind::Edited, 0),
    };
    (kind, c.target_seq)
}

impl From<Appended> for proto::SendResponse {
    fn from(a: Appended) -> Self {
        proto::SendResponse {
            msg_id: a.message.msg_id,
            seq: a.message.seq,
            duplicate: a.duplicate,
            conversation: a.message.conversation,
            conv_seq: a.message.conv_seq,
        }
    }
}

/// The stream's answer to one `Send` frame: its `SendAck`, or a `SendError` with the status the
/// unary `Gateway.Send` would have returned.
pub fn send_reply(
    client_msg_id: String,
    result: Result<Appended, Status>,
) -> proto::server_frame::Frame {
    use proto::server_frame::Frame;
    match result {
        Ok(a) => Frame::SendAck(proto::SendAck {
            client_msg_id,
            msg_id: a.message.msg_id,
            seq: a.message.seq,
            duplicate: a.duplicate,
            conversation: a.message.conversation,
            conv_seq: a.message.conv_seq,
        }),
        Err(status) => Frame::SendError(proto::SendError {
            client_msg_id,
            code: status.code() as i32,
            reason: status.message().to_string(),
            retry_after_ms: retry_after_ms(status.metadata()),
        }),
    }
}

/// The retry hint a refusal carries (`retry-after-ms`), 0 when none.
pub fn retry_after_ms(md: &tonic::metadata::MetadataMap) -> u32 {
    let hint = md.get(crate::error::RETRY_AFTER_MS).and_then(|v| v.to_str().ok());
    hint.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Wraps a unary request with `authorization: Bearer <token>` (session or node token).
pub fn authorized<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn a_message_survives_the_round_trip() {
        let m = StoredMessage {
            seq: 7,
            msg_id: "m".into(),
            from: "alice".into(),
            to: "bob".into(),
            body: "hi".into(),
            sent_at: 42,
            conversation: "g:7f".into(),
            conv_seq: 3,
            client_msg_id: "c".into(),
            event: Some(GroupEvent {
                kind: EventKind::Joined,
                users: vec!["carol".into(), "dave".into()],
                name: String::new(),
            }),
        };
        assert_eq!(StoredMessage::from(proto::Message::from(m.clone())), m);
    }

    #[test]
    fn a_refusal_carries_the_status_code_and_public_text() {
        let frame = send_reply("c-1".into(), Err(Error::invalid("body is empty").into()));
        let proto::server_frame::Frame::SendError(e) = frame else { panic!("{frame:?}") };
        assert_eq!(
            (e.client_msg_id.as_str(), e.code),
            ("c-1", tonic::Code::InvalidArgument as i32)
        );
        assert_eq!(e.reason, "body is empty");
    }
}

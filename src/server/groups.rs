//! Groups: create, change and read groups. Each call is translated from the wire and handed to
//! the node's flow of the same name.
//!
//! Who may call: anyone with a session token (`authorization: Bearer`), acting as its user.
//! Creating makes the caller the owner; adding and renaming need the owner or an admin,
//! removing the owner (or an admin, for plain members), SetRole the owner; GetGroup and leaving
//! need membership. What it costs: one
//! script call in the group's slot, then the event appended to at most `--group-fanout-limit`
//! inboxes (a larger group's event is pushed, once per node, instead), and the joined or
//! removed users' group lists (at most 100 users a change, or the members of a new group); a
//! GetGroup reads one page of at most 1000 members; each call takes one unit of the caller's
//! send allowance. What a hostile caller gets: NOT_FOUND for a
//! group they are not in (whether or not it exists), PERMISSION_DENIED for a change their role
//! does not allow, INVALID_ARGUMENT for a malformed id or name, RESOURCE_EXHAUSTED past the
//! member limit or their allowance.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::proto::{self, groups_server::Groups};

pub struct GroupsService {
    node: Arc<Node>,
}

impl GroupsService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Groups for GroupsService {
    async fn create_group(
        &self,
        req: Request<proto::CreateGroupRequest>,
    ) -> Result<Response<proto::GroupResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.create_group(&claims, req.into_inner()).await?))
    }

    async fn add_members(
        &self,
        req: Request<proto::ChangeMembersRequest>,
    ) -> Result<Response<proto::GroupResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.change_members(&claims, req.into_inner(), true).await?))
    }

    async fn remove_members(
        &self,
        req: Request<proto::ChangeMembersRequest>,
    ) -> Result<Response<proto::GroupResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.change_members(&claims, req.into_inner(), false).await?))
    }

    async fn leave_group(
        &self,
        req: Request<proto::LeaveGroupRequest>,
    ) -> Result<Response<proto::GroupResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.leave_group(&claims, req.into_inner()).await?))
    }

    async fn set_role(
        &self,
        req: Request<proto::SetRoleRequest>,
    ) -> Result<Response<proto::GroupResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.set_role(&claims, req.into_inner()).await?))
    }

    async fn rename_group(
        &self,
        req: Request<proto::RenameGroupRequest>,
    ) -> Result<Response<proto::GroupResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.rename_group(&claims, req.into_inner()).await?))
    }

    async fn get_group(
        &self,
        req: Request<proto::GetGroupRequest>,
    ) -> Result<Response<proto::GetGroupResponse>, Status> {
        let claims = self.node.authorize(req.metadata()).await?;
        Ok(Response::new(self.node.get_group(&claims.sub, req.into_inner()).await?))
    }
}

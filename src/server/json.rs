//! The unary calls as proto3 JSON, for browsers: `POST /v1/Gateway/<Method>` and
//! `POST /v1/Groups/<Method>` take the request message as JSON and answer the response message
//! as JSON, through the very handlers gRPC calls reach (same checks, same limits). The session
//! token travels as on gRPC, in `Authorization: Bearer <token>`; an empty body is the empty
//! message.
//!
//! A refusal is the gRPC status as JSON, `{"code": <gRPC code>, "message": "..."}`, with the
//! HTTP status grpc-gateway gives that code (UNAUTHENTICATED 401, INVALID_ARGUMENT 400,
//! RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...). A body that is not the message is
//! INVALID_ARGUMENT; over the largest frame, 413.
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;

use super::gateway::GatewayService;
use super::groups::GroupsService;
use crate::node::Node;
use crate::proto::{gateway_server::Gateway as _, groups_server::Groups as _};

#[derive(Clone)]
struct Api {
    gateway: Arc<GatewayService>,
    groups: Arc<GroupsService>,
}

macro_rules! call {
    ($service:ident . $method:ident) => {
        post(|State(api): State<Api>, headers: HeaderMap, body: Bytes| async move {
            unary(&headers, &body, |req| async move { api.$service.$method(req).await }).await
        })
    };
}

/// The JSON routes of every Gateway and Groups call.
pub fn routes(node: &Arc<Node>) -> Router {
    let api = Api {
        gateway: Arc::new(GatewayService::new(node.clone())),
        groups: Arc::new(GroupsService::new(node.clone())),
    };
    Router::new()
        .route("/v1/Gateway/Login", call!(gateway.login))
        .route("/v1/Gateway/Send", call!(gateway.send))
        .route("/v1/Gateway/Presence", call!(gateway.presence))
        .route("/v1/Gateway/Logout", call!(gateway.logout))
        .route("/v1/Gateway/History", call!(gateway.history))
        .route("/v1/Gateway/ListConversations", call!(gateway.list_conversations))
        .route("/v1/Gateway/MarkRead", call!(gateway.mark_read))
        .route("/v1/Gateway/GetReceipts", call!(gateway.get_receipts))
        .route("/v1/Groups/CreateGroup", call!(groups.create_group))
        .route("/v1/Groups/AddMembers", call!(groups.add_members))
        .route("/v1/Groups/RemoveMembers", call!(groups.remove_members))
        .route("/v1/Groups/LeaveGroup", call!(groups.leave_group))
        .route("/v1/Groups/GetGroup", call!(groups.get_group))
        .route("/v1/Groups/SetRole", call!(groups.set_role))
        .route("/v1/Groups/RenameGroup", call!(groups.rename_group))
        .with_state(api)
}

/// Decodes the request, calls `handler` with the caller's authorization, encodes the answer.
async fn unary<Req, Resp, F, Fut>(headers: &HeaderMap, body: &[u8], handler: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    let message: Req = match serde_json::from_slice(body) {
        Ok(m) => m,
        Err(e) => {
            return refusal(&Status::invalid_argument(format!("not the request in JSON: {e}")));
        }
    };
    let mut req = tonic::Request::new(message);
    if let Some(value) = headers.get(header::AUTHORIZATION)
        && let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(value.as_bytes())
    {
        req.metadata_mut().insert("authorization", value);
    }
    match handler(req).await {
        Ok(response) => match serde_json::to_vec(response.get_ref()) {
            Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            Err(e) => refusal(&Status::internal(format!("answer not encodable: {e}"))),
        },
        Err(status) => refusal(&status),
    }
}

/// The status as JSON, under the HTTP status that fits its code.
fn refusal(status: &Status) -> Response {
    use tonic::Code;
    let http = match status.code() {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({ "code": status.code() as i32, "message": status.message() });
    (http, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

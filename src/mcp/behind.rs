//! What a smart-async server passes on as it is: prompts, resources, completions and
//! logging belong to the server behind it, an upstream MCP server (the proxy) or an
//! rmcp handler of the library user's own ([`super::SmartServer::wrap`]). Only tool
//! calls go through the engine. A server of configured tools has nothing behind it
//! and answers these methods "method not found".

use futures_util::future::BoxFuture;
use rmcp::model::{
    CompleteRequestParams, CompleteResult, GetPromptRequestParams, GetPromptResponse,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ServerPeerInfo, SubscribeRequestParams,
    UnsubscribeRequestParams,
};
// Logging is deprecated in MCP, and still sent by the clients smart-async serves.
#[allow(deprecated)]
use rmcp::model::SetLevelRequestParams;
use rmcp::service::{Peer, RequestContext, ServiceError};
use rmcp::{ErrorData, RoleClient, RoleServer};

use crate::proxy::{upstream_error, MarkComplete, Upstream};

/// A pass-through answer.
pub(crate) type Passed<'a, T> = BoxFuture<'a, Result<T, ErrorData>>;

/// The server behind smart-async, for the methods it answers itself.
pub(crate) trait Behind: Send + Sync {
    /// What it said of itself: its capabilities and instructions are offered as ours.
    fn info(&self) -> Option<ServerPeerInfo>;

    fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListPromptsResult>;

    fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, GetPromptResponse>;

    fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListResourcesResult>;

    fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListResourceTemplatesResult>;

    fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ReadResourceResponse>;

    fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ()>;

    fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ()>;

    fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, CompleteResult>;

    #[allow(deprecated)] // logging/setLevel: deprecated in MCP, still sent by clients
    fn set_level(
        &self,
        request: SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ()>;
}

impl Upstream {
    /// Asks the running upstream, its answer marked complete for 2026-07-28 clients.
    fn ask<'a, T, Fut>(
        &'a self,
        request: impl FnOnce(Peer<RoleClient>) -> Fut + Send + 'a,
    ) -> Passed<'a, T>
    where
        T: MarkComplete + Send + 'a,
        Fut: std::future::Future<Output = Result<T, ServiceError>> + Send + 'a,
    {
        Box::pin(async move {
            request(self.peer().await?)
                .await
                .map(MarkComplete::complete)
                .map_err(upstream_error)
        })
    }
}

impl Behind for Upstream {
    fn info(&self) -> Option<ServerPeerInfo> {
        Upstream::info(self)
    }

    fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListPromptsResult> {
        self.ask(|peer| async move { peer.list_prompts(request).await })
    }

    fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, GetPromptResponse> {
        self.ask(|peer| async move { peer.get_prompt_once(request).await })
    }

    fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListResourcesResult> {
        self.ask(|peer| async move { peer.list_resources(request).await })
    }

    fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListResourceTemplatesResult> {
        self.ask(|peer| async move { peer.list_resource_templates(request).await })
    }

    fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ReadResourceResponse> {
        self.ask(|peer| async move { peer.read_resource_once(request).await })
    }

    /// Each downstream session subscribes on its own; the upstream hears the first.
    fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ()> {
        Box::pin(Upstream::subscribe(self, request.uri, ctx.peer))
    }

    fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ()> {
        Box::pin(async move { Upstream::unsubscribe(self, request.uri, &ctx.peer).await })
    }

    fn complete(
        &self,
        request: CompleteRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, CompleteResult> {
        self.ask(|peer| async move { peer.complete(request).await })
    }

    #[allow(deprecated)] // as the trait's
    fn set_level(
        &self,
        request: SetLevelRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ()> {
        self.ask(|peer| async move { peer.set_level(request).await })
    }
}

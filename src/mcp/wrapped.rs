//! An rmcp server of the library user's own behind smart-async
//! ([`super::SmartServer::wrap`]): its tools are called through the engine, so a long
//! one answers with a job instead of timing out, and what else it serves (prompts,
//! resources, completions, logging) is passed on as it is.
//!
//! A tool runs with its request's context, so while the call is inline it can log to,
//! sample from and elicit from the client, with two differences. The progress token is
//! smart-async's: it sends the call's progress (a client resets its timeout on it),
//! the tool's own among it, which a handler reports through the [`JobContext`] it
//! finds in the context's extensions. The cancellation token is the run's: it fires
//! when the client cancels the call or its job.

use futures_util::future::BoxFuture;
#[allow(deprecated)] // logging/setLevel: deprecated in MCP, still sent by clients
use rmcp::model::SetLevelRequestParams;
use rmcp::model::SubscriptionFilter;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, GetPromptResponse, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ServerPeerInfo, SubscribeRequestParams, Tool as McpTool,
    UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{RoleServer, ServerHandler};

use super::behind::{Behind, Passed};
use crate::engine::{BoxedWork, WorkOutput};
use crate::features::ASYNC_MODE_ARG;
use crate::jobs::{JobContext, JobOutput};
use crate::proxy::{carried, rpc_error, MarkComplete, Proxied};
use crate::run_error::RunError;

/// A handler behind smart-async.
pub(crate) struct Wrapped<H>(pub H);

/// The handler's tools, for the engine to call.
pub(crate) trait Handler: Behind {
    fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListToolsResult>;

    fn get_tool(&self, name: &str) -> Option<McpTool>;

    /// What of a 2026-07-28 `subscriptions/listen` it serves: its tool list may change.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter>;

    fn listen(&self, context: SubscriptionContext) -> Passed<'_, ()>;

    fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, CallToolResponse>;
}

impl<H: ServerHandler> Handler for Wrapped<H> {
    fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListToolsResult> {
        Box::pin(self.0.list_tools(request, ctx))
    }

    fn get_tool(&self, name: &str) -> Option<McpTool> {
        self.0.get_tool(name)
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        self.0.accepted_subscription_filter(requested)
    }

    fn listen(&self, context: SubscriptionContext) -> Passed<'_, ()> {
        Box::pin(self.0.listen(context))
    }

    fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, CallToolResponse> {
        Box::pin(self.0.call_tool(request, ctx))
    }
}

impl<H: ServerHandler> Behind for Wrapped<H> {
    fn info(&self) -> Option<ServerPeerInfo> {
        Some(self.0.get_info().into())
    }

    fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListPromptsResult> {
        marked(self.0.list_prompts(request, ctx))
    }

    fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, GetPromptResponse> {
        marked(self.0.get_prompt(request, ctx))
    }

    fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListResourcesResult> {
        marked(self.0.list_resources(request, ctx))
    }

    fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ListResourceTemplatesResult> {
        marked(self.0.list_resource_templates(request, ctx))
    }

    fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ReadResourceResponse> {
        marked(self.0.read_resource(request, ctx))
    }

    #[allow(deprecated)] // resources/subscribe: the legacy lifecycle's, served there
    fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ()> {
        Box::pin(self.0.subscribe(request, ctx))
    }

    #[allow(deprecated)] // as `subscribe`
    fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ()> {
        Box::pin(self.0.unsubscribe(request, ctx))
    }

    fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, CompleteResult> {
        marked(self.0.complete(request, ctx))
    }

    #[allow(deprecated)] // as the trait's
    fn set_level(
        &self,
        request: SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Passed<'_, ()> {
        Box::pin(self.0.set_level(request, ctx))
    }
}

/// A handler's answer marked `resultType: complete` for 2026-07-28 clients, as the
/// proxy marks an upstream's: a result built from its wire form leaves it out (rmcp
/// removes it again for clients of older versions).
fn marked<'a, T: MarkComplete + Send + 'a>(
    answer: impl std::future::Future<Output = Result<T, rmcp::ErrorData>> + Send + 'a,
) -> Passed<'a, T> {
    Box::pin(async move { answer.await.map(MarkComplete::complete) })
}

/// What a handler's tool answered, as the engine carries it: a result (stored in a job
/// as the proxy stores an upstream's), or a request for the client's input (SEP-2322),
/// which only an inline call can pass on.
#[derive(Debug)]
pub(crate) enum Handled {
    Result(Proxied),
    InputRequired(Box<rmcp::model::InputRequiredResult>),
}

impl WorkOutput for Handled {
    fn into_output(self) -> JobOutput {
        match self {
            Handled::Result(result) => result.into_output(),
            // The client's answer would come as a new call, which a job cannot take.
            Handled::InputRequired(_) => Proxied(CallToolResult::error(vec![
                rmcp::model::ContentBlock::text(
                    "the tool asked the client for input after its call had moved to the \
                     background, where no answer can reach it: call the tool again",
                ),
            ]))
            .into_output(),
        }
    }
}

/// The work of one call of the handler's tool, run with the request's context.
pub(crate) fn call(
    handler: std::sync::Arc<dyn Handler>,
    mut request: CallToolRequestParams,
    mut ctx: RequestContext<RoleServer>,
) -> BoxedWork<Handled> {
    if let Some(arguments) = &mut request.arguments {
        arguments.remove(ASYNC_MODE_ARG);
    }
    // smart-async sends this call's progress; the tool reports its own to the run.
    ctx.meta.remove("progressToken");
    if let Some(meta) = &mut request.meta {
        meta.remove("progressToken");
    }
    Box::new(
        move |run: JobContext| -> BoxFuture<'static, Result<Handled, RunError>> {
            ctx.ct = run.token().clone();
            ctx.extensions.insert(run);
            Box::pin(async move {
                match handler.call_tool(request, ctx).await {
                    Ok(CallToolResponse::Complete(result)) => carried(result).map(Handled::Result),
                    Ok(CallToolResponse::InputRequired(input)) => {
                        Ok(Handled::InputRequired(Box::new(input)))
                    }
                    Ok(_) => Err(RunError::tool(
                        "the tool answered with a task of its own: behind smart-async, which \
                         makes the tasks, a handler's tools answer results",
                    )),
                    Err(error) => Err(rpc_error(error)),
                }
            })
        },
    )
}

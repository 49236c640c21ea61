//! The `ServerHandler`: server info, the tool list filtered by the caller's
//! capabilities, and tool calls through the capability check and audit log.

use rmcp::model::*;
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{tool_handler, ErrorData as McpError, RoleServer, ServerHandler};

use crate::tools::SovrynServer;

const INSTRUCTIONS: &str = "Sovryn exposes one synced, versioned folder. Paths are relative to the folder root ('docs/a.md'); '..' and absolute paths are refused. Every write, edit, move, delete and restore records a new version (nothing is lost: see get_version_history, diff_versions, restore_version). Use search_files to find content, list_directory/directory_tree to browse, edit_file with dry_run to preview a change.";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SovrynServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .build(),
        )
        .with_server_info(
            Implementation::new("sovryn", env!("CARGO_PKG_VERSION"))
                .with_title(format!("Sovryn ({})", self.shared.node_name)),
        )
        .with_instructions(INSTRUCTIONS)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // Handshake-era sessions (stdio, HTTP with a session id) get
        // `notifications/resources/list_changed` on their own stream.
        let who = self.local.clone().or_else(|| {
            context
                .extensions
                .get::<axum::http::request::Parts>()?
                .extensions
                .get::<crate::tokens::Principal>()
                .cloned()
        });
        if let Some(p) = who {
            let ended = self.ending(&context.extensions);
            self.follow_list_changes(p, context.peer, ended);
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let p = self.principal(&context);
        Ok(ListToolsResult::with_all_items(self.tools_for(p.as_ref())))
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        self.list_resources_for(request, context).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(self.templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        self.read_resource_for(request, context).await
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.subscribe_uri(request.uri, context)
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.unsubscribe_uri(&request.uri);
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    async fn listen(&self, cx: rmcp::service::SubscriptionContext) -> Result<(), McpError> {
        self.listen_changes(cx).await
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.dispatch(request, context).await
    }
}

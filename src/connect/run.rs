//! The run: `initialize`, `tools/list` and optionally `tools/call`, each step retried while
//! the driver answers its 401s and 403s, all within the run's deadline.

use serde_json::Value;

use crate::mcp::{McpClient, McpError};
use crate::oauth::OAuthError;
use crate::upstream::state::Event;

use super::authorizer::Authorizer;
use super::driver::Driver;
use super::options::{ConnectError, ConnectOptions, ConnectReport};

/// Runs the whole connection within `options.timeout`.
pub async fn connect(options: ConnectOptions) -> Result<ConnectReport, ConnectError> {
    let deadline = options.timeout;
    tokio::time::timeout(deadline, run(options))
        .await
        .map_err(|_| ConnectError::Timeout(deadline))?
}

async fn run(options: ConnectOptions) -> Result<ConnectReport, ConnectError> {
    let mut mcp = McpClient::new(options.server_url.clone(), options.timeout);
    let mut auth = Driver::new(Authorizer::new(options.clone()));

    let server_info = with_authorization(&mut auth, &mut mcp, Step::Initialize).await?;
    let tools = with_authorization(&mut auth, &mut mcp, Step::ListTools).await?;
    let tool_result = match &options.call_tool {
        Some((name, args)) => {
            Some(with_authorization(&mut auth, &mut mcp, Step::CallTool(name, args)).await?)
        }
        None => None,
    };
    Ok(ConnectReport {
        server_info,
        protocol_version: mcp.protocol_version().map(String::from),
        tools,
        tool_result,
        authorizations: auth.auth.authorizations,
        refreshes: auth.auth.refreshes,
        token: auth.auth.token,
    })
}

enum Step<'a> {
    Initialize,
    ListTools,
    CallTool(&'a str, &'a Value),
}

/// MCP attempts of one step: each failed one feeds the machine, which runs at most one flow
/// per attempt; the login bound ends a run long before this.
const MAX_ATTEMPTS_PER_STEP: u32 = 8;

/// Runs one MCP step, answering auth challenges until it succeeds or the bounds are reached.
async fn with_authorization(
    driver: &mut Driver,
    mcp: &mut McpClient,
    step: Step<'_>,
) -> Result<Value, ConnectError> {
    for _ in 0..MAX_ATTEMPTS_PER_STEP {
        let token = driver
            .auth
            .token
            .as_ref()
            .map(|t| t.access_token.secret().clone());
        let token = token.as_deref();
        mcp.set_dpop(driver.auth.dpop_for_token());
        let result = match &step {
            Step::Initialize => mcp.initialize(token).await,
            Step::ListTools => mcp.list_tools(token).await,
            Step::CallTool(name, args) => mcp.call_tool(token, name, (*args).clone()).await,
        };
        match result {
            Ok(value) => return Ok(value),
            Err(McpError::Unauthorized(challenge)) => {
                driver
                    .ask(Event::Refused { token: None }, &challenge)
                    .await?;
            }
            // Any other 403 ends the run with the server's own answer (the machine would only
            // call it forbidden).
            Err(McpError::Forbidden(challenge)) if challenge.is_insufficient_scope() => {
                let event = Event::Forbidden {
                    token: None,
                    insufficient_scope: challenge.is_insufficient_scope(),
                    granted: driver.auth.token.as_ref().and_then(|t| t.scope.clone()),
                    demanded: challenge.scope.clone(),
                };
                driver.ask(event, &challenge).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ConnectError::OAuth(OAuthError::TooManyAuthorizations {
        attempts: driver.auth.authorizations,
    }))
}

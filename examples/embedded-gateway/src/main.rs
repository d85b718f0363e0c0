//! Embedding gw in an axum service.
//!
//! The service answers `/hello` itself and hands every other request to an embedded
//! [`gw_core::Gateway`], configured here from API definitions in YAML. The same gateway can
//! be re-configured at any time with [`gw_core::Gateway::apply`]; requests in flight keep the
//! configuration they started with.
//!
//! ```text
//! cargo run -p echo-upstream &                  # an upstream on 127.0.0.1:9001
//! cargo run -p embedded-gateway -- examples/orders-api.yaml
//! curl http://127.0.0.1:3000/hello
//! curl http://127.0.0.1:3000/orders/v1/items/42
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::IntoResponse;
use axum::routing::get;
use gw_core::gateway::Resources;
use gw_core::metrics::ProxyMetrics;
use gw_core::model::{self, Format, ValidationContext};
use gw_core::policy::PolicyRegistry;
use gw_core::{ConnInfo, Gateway};

/// Every request the service's own routes do not answer goes through the gateway.
async fn proxy(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> impl IntoResponse {
    gateway
        .handle(
            request,
            ConnInfo {
                peer,
                secure: false,
            },
        )
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/orders-api.yaml".to_string());
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {path}: {e}"))?;

    // your own policies would be registered here
    let policies = PolicyRegistry::builtin();
    let ctx = ValidationContext {
        policies: Some(&policies),
    };
    let mut set = model::parse_set(&text, Format::Yaml, &ctx)?;
    // consumers' clear keys and passwords are hashed before they are served (argon2 is slow
    // by design: in a running service, do this off the async threads)
    for consumer in &mut set.consumers {
        gw_core::credential::seal(consumer).map_err(|e| e.to_string())?;
    }
    let gateway = Arc::new(Gateway::new(policies, ProxyMetrics::unregistered()));
    gateway.apply_resources(
        1,
        Resources {
            apis: set.apis.into_iter().map(Arc::new).collect(),
            certificates: set.certificates.into_iter().map(Arc::new).collect(),
            consumers: set.consumers.into_iter().map(Arc::new).collect(),
        },
    )?;

    let app = Router::new()
        .route(
            "/hello",
            get(|| async { "hello from the service itself\n" }),
        )
        .fallback(proxy)
        .with_state(gateway);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

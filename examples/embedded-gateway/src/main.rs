//! Embedding gw in an axum service.
//!
//! The service answers `/hello` itself and hands every other request to an embedded
//! [`gw_core::Gateway`], mounted as the router's fallback service. The gateway serves the
//! definitions of a YAML file (APIs, certificates, consumers, whose clear keys it hashes);
//! it can be given new ones at any time ([`gw_core::Gateway::apply_definitions`] again),
//! and requests in flight keep the configuration they started with.
//!
//! ```text
//! cargo run -p echo-upstream &                  # an upstream on 127.0.0.1:9001
//! cargo run -p embedded-gateway -- examples/orders-api.yaml 127.0.0.1:3000
//! curl http://127.0.0.1:3000/hello
//! curl http://127.0.0.1:3000/orders/v1/items/42
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use gw_core::Gateway;
use gw_core::metrics::ProxyMetrics;
use gw_core::model::Format;
use gw_core::policy::PolicyRegistry;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or("examples/orders-api.yaml".into());
    let addr = args.next().unwrap_or("127.0.0.1:3000".into());
    let definitions = std::fs::read(&path).map_err(|e| format!("cannot read {path}: {e}"))?;

    // your own policies would be registered here
    let gateway = Gateway::new(PolicyRegistry::builtin(), ProxyMetrics::unregistered());
    let gateway = Arc::new(gateway);
    gateway
        .apply_definitions(1, &definitions, Format::Yaml)
        .await?;

    let app = Router::new()
        .route(
            "/hello",
            get(|| async { "hello from the service itself\n" }),
        )
        .fallback_service(gateway.service());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    // the peer's address in each request's extensions: the gateway's client address
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await?;
    Ok(())
}

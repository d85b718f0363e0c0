//! Serves [`tower_layers::app`] on 127.0.0.1:3000 (or the address in `LISTEN`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_string());
    let app = tower_layers::app(tower_layers::consumers()?)?;
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

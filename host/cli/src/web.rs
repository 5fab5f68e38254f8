//! `quorumvm web`: serves the browser demo's static files. The page compiles in the browser;
//! the server only hands out files (with `application/wasm` for `.wasm`, which streaming
//! compilation requires).

use std::net::SocketAddr;
use std::path::PathBuf;

use tower_http::services::ServeDir;

use crate::exit::{Code, Failure, Result};

pub fn serve(addr: SocketAddr, dir: PathBuf) -> Result<()> {
    if !dir.join("index.html").is_file() {
        return Err(Failure::new(
            Code::NoInput,
            format!(
                "{} has no index.html: build the page first with `bash web/build.sh`",
                dir.display()
            ),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Code::IoErr, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Failure::new(Code::IoErr, format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Failure::new(Code::IoErr, e.to_string()))?;
        // The first line is the contract with scripts and tests that start us on port 0.
        println!("serving {} on http://{local}/", dir.display());
        let app = axum::Router::new().fallback_service(ServeDir::new(&dir));
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| Failure::new(Code::IoErr, format!("server failed: {e}")))
    })
}

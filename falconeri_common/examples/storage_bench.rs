//! One side of `bench/storage`: moves files with exactly the calls the worker
//! makes, so the benchmark measures the shipped code.
//!
//!     storage_bench down URI DIR   # list URI, then download_inputs into DIR
//!     storage_bench up DIR URI     # upload_outputs of DIR to URI
//!
//! Credentials and endpoints come from the environment, as for the worker.

use std::path::Path;

use anyhow::{Context, Result, bail};
use falconeri_common::{
    api::InputFileResponse,
    storage::{download_inputs, storage_for, upload_outputs},
};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["down", uri, dir] => {
            let listing = storage_for(uri)?.list(uri).await?;
            let files: Vec<_> = listing
                .into_iter()
                .map(|object| InputFileResponse {
                    uri: object.uri,
                    local_path: object.relative_path,
                })
                .collect();
            let dir = Path::new(dir);
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir:?}"))?;
            let bytes = download_inputs(&files, dir).await?;
            println!("downloaded {} files, {bytes} bytes", files.len());
        }
        ["up", dir, uri] => {
            let dir = Path::new(dir);
            let uploaded = upload_outputs(dir, dir, uri).await?;
            let bytes: i64 = uploaded.iter().map(|file| file.size).sum();
            println!("uploaded {} files, {bytes} bytes", uploaded.len());
        }
        _ => bail!("usage: storage_bench down URI DIR | storage_bench up DIR URI"),
    }
    Ok(())
}

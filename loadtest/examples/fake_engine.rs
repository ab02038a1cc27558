//! Serves one of the fake engines of `tests/fakes` on a local port until
//! interrupted, charging for writes the way the engine documents it, so
//! that `sluice-loadtest --engine-url` shows what that cost model predicts:
//!
//! ```sh
//! cargo run --release -p sluice-loadtest --example fake_engine -- meilisearch --batch-ms 1200 --document-us 50
//! target/release/sluice-loadtest backfill --keys 100000 --rate 1 --sink meilisearch --engine-url http://127.0.0.1:PORT
//! ```

#[path = "../../tests/fakes/mod.rs"]
mod fakes;

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Serves a fake Elasticsearch or Meilisearch that charges for writes as the engine does"
)]
struct Args {
    /// `elasticsearch` or `meilisearch`.
    engine: String,
    /// Meilisearch: milliseconds each batch of tasks takes, whatever its size.
    #[arg(long, default_value_t = 0.0)]
    batch_ms: f64,
    /// Microseconds each document adds (Meilisearch: to its batch;
    /// Elasticsearch: to its bulk request).
    #[arg(long, default_value_t = 0.0)]
    document_us: f64,
    /// Elasticsearch: milliseconds each bulk request takes besides its
    /// documents.
    #[arg(long, default_value_t = 0.0)]
    request_ms: f64,
    /// Elasticsearch: bulk requests worked on at once.
    #[arg(long, default_value_t = 2)]
    writers: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let ms = |ms: f64| Duration::from_secs_f64(ms / 1000.0);
    let per_document = Duration::from_secs_f64(args.document_us / 1e6);
    let (url, _es, _meili) = match args.engine.as_str() {
        "elasticsearch" => {
            let es =
                fakes::elasticsearch::FakeElasticsearch::start(fakes::elasticsearch::FakeOptions {
                    record_requests: false,
                    write_cost: fakes::cost::WriteCost {
                        per_request: ms(args.request_ms),
                        per_document,
                        writers: args.writers,
                    },
                    ..Default::default()
                })
                .await;
            (es.url(), Some(es), None)
        }
        "meilisearch" => {
            let meili =
                fakes::meilisearch::FakeMeilisearch::start(fakes::meilisearch::FakeOptions {
                    processing_delay: ms(args.batch_ms),
                    processing_per_document: per_document,
                    ..Default::default()
                })
                .await;
            (meili.url(), None, Some(meili))
        }
        other => {
            eprintln!("fake_engine: {other:?} is not elasticsearch or meilisearch");
            std::process::exit(2);
        }
    };
    println!("{url}");
    let _ = tokio::signal::ctrl_c().await;
}

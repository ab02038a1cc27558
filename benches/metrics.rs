//! How long a Prometheus scrape of `/metrics` takes with many sinks and
//! tables configured: sluice's exporter, its catalogue registered as at a
//! start, every series with a value, scraped over HTTP as Prometheus does.
//!
//! ```text
//! cargo bench --bench metrics                          # 10 sinks, 100 tables, 300 scrapes
//! cargo bench --bench metrics -- --sinks 20 --tables 500
//! ```

use std::io::{Read, Write};
use std::time::Instant;

use hdrhistogram::Histogram;
use sluice::telemetry::{self, Known};

const USAGE: &str = "usage: cargo bench --bench metrics -- [--sinks N] [--tables N] [--scrapes N]
  --sinks N    configured sinks (default 10)
  --tables N   configured tables (default 100)
  --scrapes N  scrapes to time (default 300)";

fn arg(args: &[String], name: &str, default: usize) -> usize {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                eprintln!("{USAGE}");
                std::process::exit(2)
            }),
        None => default,
    }
}

fn scrape(port: u16) -> usize {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("the exporter answers");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = Vec::new();
    stream.read_to_end(&mut body).unwrap();
    body.len()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let (sinks, tables, scrapes) = (
        arg(&args, "--sinks", 10),
        arg(&args, "--tables", 100),
        arg(&args, "--scrapes", 300),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &sluice::pipeline::stats::SECONDS_BUCKETS,
        )
        .unwrap()
        .install()
        .expect("the exporter starts");
    let known = Known {
        sinks: (0..sinks).map(|i| format!("sink_{i}")).collect(),
        tables: (0..tables).map(|i| format!("public.table_{i}")).collect(),
        functions: (0..5).map(|i| format!("function_{i}")).collect(),
    };
    telemetry::register(&known);
    // Every series with a value, histograms with samples in many buckets.
    for (i, sink) in known.sinks.iter().enumerate() {
        for n in 0..1000 {
            let seconds = (n as f64 + i as f64) / 1000.0;
            metrics::histogram!("sluice_end_to_end_latency_seconds", "sink" => sink.clone())
                .record(seconds);
            metrics::histogram!("sluice_sink_commit_seconds", "sink" => sink.clone())
                .record(seconds / 10.0);
        }
        metrics::counter!("sluice_sink_writes_total", "sink" => sink.clone()).increment(123_456);
    }
    for table in &known.tables {
        metrics::counter!("sluice_changes_total", "table" => table.clone(), "op" => "insert")
            .increment(42);
    }
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let bytes = scrape(port);
    let mut times = Histogram::<u64>::new(3).unwrap();
    for _ in 0..scrapes {
        let start = Instant::now();
        scrape(port);
        times.record(start.elapsed().as_micros() as u64).unwrap();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{sinks} sinks, {tables} tables: {} lines, {} kB a scrape; scrape time over {scrapes}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text.lines().filter(|l| !l.starts_with('#') && l.starts_with("sluice_")).count()
        },
        bytes / 1024,
        ms(times.value_at_quantile(0.5)),
        ms(times.value_at_quantile(0.99)),
        ms(times.max()),
    );
}

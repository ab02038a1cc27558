//! `sluice demo`: the quickstart. Starts a throwaway Postgres with a demo
//! table, streams it into an embedded index while rows are inserted, updated
//! and deleted, waits until the index equals the table, and searches it.

use std::time::{Duration, Instant};

use crate::cli::DemoArgs;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::local_pg::{LocalPostgres, LocalPostgresOptions};
use crate::sink::embedded::search;

const DEMO_TABLE: &str = "
CREATE TABLE public.products (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    description text,
    price numeric(10, 2),
    tags text[],
    in_stock boolean NOT NULL DEFAULT true,
    attributes jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
)";

const DEMO_ROWS: &str = "
INSERT INTO public.products (name, description, price, tags, in_stock, attributes)
SELECT (ARRAY['red','blue','green','black','white'])[1 + i % 5] || ' ' ||
       (ARRAY['shoe','shirt','lamp','chair','mug','bike'])[1 + i % 6] || ' ' || i,
       'A sturdy product, number ' || i,
       round((5 + (i % 200) * 1.25)::numeric, 2),
       ARRAY[(ARRAY['sale','new','eco'])[1 + i % 3]],
       i % 7 <> 0,
       jsonb_build_object('weight_g', 100 + i % 900, 'origin', (ARRAY['FR','DE','JP'])[1 + i % 3])
FROM generate_series(1, $1::int) AS i";

fn pg_err(context: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::new(ErrorKind::Connection, format!("{context}: {e}"))
}

pub async fn run(args: DemoArgs) -> Result<()> {
    println!("starting a throwaway Postgres (wal_level=logical) ...");
    let cluster =
        tokio::task::spawn_blocking(|| LocalPostgres::start(LocalPostgresOptions::default()))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?
            .map_err(|e| Error::new(ErrorKind::Setup, e.to_string()))?;
    cluster
        .create_database("demo")
        .await
        .map_err(|e| Error::new(ErrorKind::Setup, e.to_string()))?;
    let url = cluster.url("demo");
    let client = crate::postgres::conninfo::ConnInfo::parse(&url, None, None)?
        .connect_sql()
        .await?;
    client
        .batch_execute(DEMO_TABLE)
        .await
        .map_err(pg_err("creating the demo table"))?;

    // Each demo streams from a new throwaway Postgres: the state of an
    // earlier demo (its index, slot record, backfills) is for another one.
    if args.data_dir.exists() {
        let ours = ["indexes", "sluice.lock", "slot.json", "backfills"]
            .iter()
            .any(|f| args.data_dir.join(f).exists());
        let empty = std::fs::read_dir(&args.data_dir).is_ok_and(|mut d| d.next().is_none());
        if !ours && !empty {
            return Err(Error::new(
                crate::error::ErrorKind::Config,
                format!("{} is not a sluice data directory", args.data_dir.display()),
            )
            .hint(
                "the demo recreates its directory: give it an empty or new one with --data-dir",
            ));
        }
        std::fs::remove_dir_all(&args.data_dir)
            .map_err(|e| Error::io(format!("removing {}", args.data_dir.display()), e))?;
    }
    let mut config = Config::from_flags(
        url.clone(),
        &["public.products".to_owned()],
        args.data_dir.clone(),
    );
    config.source.status_interval_ms = 1000;
    if let crate::config::SinkKind::Embedded {
        commit_interval_ms, ..
    } = &mut config.sinks[0].kind
    {
        *commit_interval_ms = 200;
    }
    config.validate()?;
    crate::service::prepare(&config).await?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pipeline_config = config.clone();
    let pipeline = tokio::spawn(async move {
        crate::service::run(&pipeline_config, async {
            let _ = stop_rx.await;
        })
        .await
    });

    let started = Instant::now();
    println!(
        "streaming public.products into {} while writing to it:",
        args.data_dir.display()
    );
    client
        .execute(DEMO_ROWS, &[&(args.rows as i32)])
        .await
        .map_err(pg_err("inserting demo rows"))?;
    println!("  inserted {} rows", args.rows);
    let updated = client
        .execute("UPDATE public.products SET price = price * 0.8, tags = tags || 'discount'::text WHERE id % 10 = 0", &[])
        .await
        .map_err(pg_err("updating demo rows"))?;
    println!("  discounted {updated} rows");
    let deleted = client
        .execute("DELETE FROM public.products WHERE id % 97 = 0", &[])
        .await
        .map_err(pg_err("deleting demo rows"))?;
    println!("  deleted {deleted} rows");

    let expected: i64 = client
        .query_one("SELECT count(*) FROM public.products", &[])
        .await
        .map_err(pg_err("counting rows"))?
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut indexed = 0;
    while Instant::now() < deadline {
        if let Ok(found) = search::search(&args.data_dir, "products", "*", 1) {
            indexed = found.total as i64;
            if indexed == expected {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "index holds {indexed} documents, table holds {expected} rows ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let query = "name:shoe AND tags:discount";
    let found = search::search(&args.data_dir, "products", query, 3)?;
    println!(
        "\nsearch `{query}`: {} documents match, the first 3:",
        found.total
    );
    for doc in &found.documents {
        println!("  {doc}");
    }
    let _ = stop_tx.send(());
    pipeline
        .await
        .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))??;
    drop(client);
    drop(cluster);
    println!(
        "\nsearch it yourself: sluice search --data-dir {} --index products 'red lamp'",
        args.data_dir.display()
    );
    if indexed != expected {
        return Err(Error::new(
            ErrorKind::Sink,
            "the index did not catch up with the table within 60 s",
        ));
    }
    Ok(())
}

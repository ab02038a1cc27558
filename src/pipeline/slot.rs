//! The replication slot: created on the first run, and afterwards checked
//! to be the very slot this data directory streamed from. A slot that is
//! missing, invalidated, on another database system, or created anew has
//! lost the changes in between: streaming from it would leave the indexes
//! stale without a word. sluice refuses, or resyncs when told to.

use std::path::Path;

use tokio_postgres::Client;

use crate::data_dir::SlotRecord;
use crate::error::{Error, ErrorKind, Result};
use crate::postgres::catalog;

/// What the caller must do before streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotOutcome {
    /// The slot holds every change since the last run.
    Ready,
    /// A new slot, starting at this position, replaced a lost one: every
    /// table's documents must be emptied and backfilled again into every sink.
    Resync(crate::lsn::Lsn),
}

/// Ensures the slot exists and is ours. `streamed_before`: the data
/// directory has sinks that were set up (so a missing slot means changes
/// were lost, even without a record from an older sluice).
pub async fn ensure(
    client: &Client,
    slot: &str,
    on_lost: OnSlotLost,
    data_dir: &Path,
    streamed_before: bool,
) -> Result<SlotOutcome> {
    let record = SlotRecord::load(data_dir)?;
    let system = catalog::system_identifier(client).await?;
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                format!("reading the database name failed: {e}"),
            )
        })?
        .get(0);
    let info = catalog::slot_info(client, slot).await?;
    let problem = match (&record, &info) {
        (_, Some(info)) if info.lost => Some(format!(
            "the replication slot {slot} was invalidated by Postgres (wal_status = 'lost'): \
             the WAL it needed was removed (max_slot_wal_keep_size)"
        )),
        (Some(r), _) if r.system_identifier != system || r.database != database => Some(format!(
            "the data directory streamed from database {} of system {}, not from database \
             {database} of system {system}",
            r.database, r.system_identifier
        )),
        (Some(r), _) if r.slot != slot => Some(format!(
            "the data directory streamed from slot {}, not {slot}",
            r.slot
        )),
        (Some(_), None) => Some(format!("the replication slot {slot} no longer exists")),
        (Some(r), Some(info))
            if r.confirmed
                .zip(info.confirmed_flush)
                .is_some_and(|(ours, slots)| slots > ours) =>
        {
            Some(format!(
                "the replication slot {slot} is not the one this data directory streamed from: \
                 it is confirmed up to {}, past the last position sluice confirmed ({}), so it \
                 was created anew or another consumer advanced it",
                info.confirmed_flush.unwrap_or_default(),
                r.confirmed.unwrap_or_default()
            ))
        }
        (None, None) if streamed_before => Some(format!(
            "the replication slot {slot} no longer exists, and sinks were set up from it"
        )),
        _ => None,
    };
    let record_now = |created_at| SlotRecord {
        slot: slot.to_owned(),
        system_identifier: system.clone(),
        database: database.clone(),
        created_at,
        confirmed: Some(created_at),
    };
    let Some(problem) = problem else {
        match (&record, &info) {
            (Some(r), Some(info)) if r.confirmed.is_none() => {
                // Recorded by an older sluice: from now on, confirmations are too.
                SlotRecord {
                    confirmed: info.confirmed_flush,
                    ..r.clone()
                }
                .save(data_dir)?;
            }
            (Some(_), Some(_)) => {}
            (None, Some(info)) => {
                // Adopted: a slot created by an earlier sluice or by hand.
                record_now(info.confirmed_flush.unwrap_or_default()).save(data_dir)?;
            }
            (_, None) => {
                let at = catalog::create_slot(client, slot).await?;
                record_now(at).save(data_dir)?;
            }
        }
        return Ok(SlotOutcome::Ready);
    };
    let other_system = record
        .as_ref()
        .is_some_and(|r| r.system_identifier != system || r.database != database);
    match on_lost {
        OnSlotLost::Fail => Err(Error::new(
            ErrorKind::Setup,
            format!("{problem}: the changes made since sluice last streamed cannot be read, so the indexes may be stale"),
        )
        .hint(if other_system {
            "point source.database_url at the database this data directory streamed from, \
             or start with a new data directory (every sink is then backfilled)"
        } else {
            "set source.on_slot_lost = \"resync\" to create a new slot, empty every table's \
             documents and backfill them again into every sink"
        })),
        OnSlotLost::Resync if other_system => Err(Error::new(
            ErrorKind::Setup,
            format!("{problem}: a resync cannot reuse this data directory's positions"),
        )
        .hint("start with a new data directory (every sink is then backfilled)")),
        OnSlotLost::Resync => {
            tracing::warn!(slot, problem, "resyncing: a new slot, and every table backfilled again into every sink");
            if info.is_some() {
                catalog::drop_slot(client, slot).await?;
            }
            let at = catalog::create_slot(client, slot).await?;
            record_now(at).save(data_dir)?;
            Ok(SlotOutcome::Resync(at))
        }
    }
}

/// How often the confirmation ledger is written, at most: confirmations
/// wait for it, and a slot confirmed a second later only holds WAL a second
/// longer.
const LEDGER_SPACING: std::time::Duration = std::time::Duration::from_secs(1);

/// The highest position the reader may confirm to the slot: each is written
/// to the slot record (and synced) before Postgres hears of it, so at the
/// next start a slot confirmed further than the record is known not to be
/// ours. Writes happen beside the reader, at most every [`LEDGER_SPACING`].
#[derive(Clone)]
pub struct ConfirmLedger {
    wanted: tokio::sync::watch::Sender<crate::lsn::Lsn>,
    saved: tokio::sync::watch::Receiver<crate::lsn::Lsn>,
    record: std::sync::Arc<std::sync::Mutex<(std::path::PathBuf, SlotRecord)>>,
}

impl ConfirmLedger {
    /// The ledger of the slot [`ensure`] recorded in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<ConfirmLedger> {
        let record = SlotRecord::load(data_dir)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                format!("{} has no slot record", data_dir.display()),
            )
        })?;
        let at = record.confirmed.unwrap_or(record.created_at);
        let (wanted, mut wanted_rx) = tokio::sync::watch::channel(at);
        let (saved_tx, saved) = tokio::sync::watch::channel(at);
        let record = std::sync::Arc::new(std::sync::Mutex::new((data_dir.to_owned(), record)));
        let ledger = ConfirmLedger {
            wanted,
            saved,
            record,
        };
        let writer = ledger.clone();
        tokio::spawn(async move {
            while wanted_rx.changed().await.is_ok() {
                let lsn = *wanted_rx.borrow_and_update();
                match writer.save(lsn).await {
                    Ok(()) => {
                        saved_tx.send_if_modified(|s| {
                            let newer = lsn > *s;
                            *s = (*s).max(lsn);
                            newer
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot record the confirmed position; the slot is not confirmed further until it can be")
                    }
                }
                tokio::time::sleep(LEDGER_SPACING).await;
            }
        });
        Ok(ledger)
    }

    /// The position that may be confirmed now, given that `acked` is
    /// durable in every sink; asks for `acked` to be recorded.
    pub fn allowed(&self, acked: crate::lsn::Lsn) -> crate::lsn::Lsn {
        self.wanted.send_if_modified(|w| {
            let newer = acked > *w;
            *w = (*w).max(acked);
            newer
        });
        acked.min(*self.saved.borrow())
    }

    /// Records `lsn` now (the final confirmation at shutdown).
    pub async fn record(&self, lsn: crate::lsn::Lsn) -> Result<()> {
        self.save(lsn).await
    }

    async fn save(&self, lsn: crate::lsn::Lsn) -> Result<()> {
        let record = self.record.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = record.lock().unwrap_or_else(|p| p.into_inner());
            let (dir, record) = &mut *guard;
            if record.confirmed.is_some_and(|c| c >= lsn) {
                return Ok(());
            }
            let next = SlotRecord {
                confirmed: Some(lsn),
                ..record.clone()
            };
            next.save(dir)?;
            *record = next;
            Ok(())
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("recording the confirmed position failed: {e}"),
            )
        })?
    }
}

/// Measures the WAL the slot holds on the primary (at start and every ten
/// seconds: `sluice_slot_retained_wal_bytes`), and warns, at most once a
/// minute, while it is more than `threshold` bytes (0: never).
pub async fn watch_retained_wal(
    conninfo: crate::postgres::conninfo::ConnInfo,
    slot: String,
    threshold: u64,
) {
    let mut client = None;
    let mut warned: Option<std::time::Instant> = None;
    let mut every = tokio::time::interval(RETAINED_WAL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if client.is_none() {
            client = conninfo.connect_sql().await.ok();
        }
        let Some(c) = &client else { continue };
        match catalog::slot_info(c, &slot).await {
            Ok(Some(info)) => {
                let Some(bytes) = info.retained_bytes else {
                    continue;
                };
                metrics::gauge!("sluice_slot_retained_wal_bytes").set(bytes as f64);
                let over = threshold > 0 && bytes as u64 > threshold;
                if over && warned.is_none_or(|at| at.elapsed() >= RETAINED_WAL_WARN_EVERY) {
                    warned = Some(std::time::Instant::now());
                    tracing::warn!(
                        slot,
                        retained_bytes = bytes,
                        threshold,
                        "the replication slot holds more WAL on the primary than \
                         source.retained_wal_warn_bytes: sluice is behind or stalled, and the \
                         primary's disk fills until it catches up"
                    );
                }
            }
            Ok(None) => {}
            Err(_) => client = None,
        }
    }
}

/// How often the WAL the slot holds is measured (`sluice_slot_retained_wal_bytes`).
const RETAINED_WAL_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// A slot holding too much WAL is warned about at most this often.
const RETAINED_WAL_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// `source.on_slot_lost`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSlotLost {
    /// Refuse to stream, saying what happened and what to do.
    #[default]
    Fail,
    /// Create a new slot, empty every table's documents and backfill them again.
    Resync,
}

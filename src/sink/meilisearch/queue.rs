//! The queue of closed batches: enqueued in write order, their tasks
//! followed, and a failed batch sent again before everything of its index
//! that came after it (see the module documentation of the sink).

use super::client::Sent;
use super::request::{Batch, Kind};
use super::tasks::{self, Outcome};
use super::{Entry, MeilisearchSink, State};
use crate::error::{Error, ErrorKind, Result};

impl MeilisearchSink {
    fn in_flight(&self) -> usize {
        self.queue
            .iter()
            .filter(|e| matches!(e.state, State::Enqueued(_) | State::Rejected(_)))
            .count()
    }

    /// Enqueues the unsent batches in order, waiting for the oldest task
    /// when `max_tasks_in_flight` are out.
    pub(super) async fn send_unsent(&mut self) -> Result<()> {
        while let Some(i) = self
            .queue
            .iter()
            .position(|e| matches!(e.state, State::Unsent))
        {
            if self.in_flight() >= self.config().max_tasks_in_flight {
                self.settle_oldest().await?;
                continue;
            }
            self.park_blocked(i)?;
            let entry = &mut self.queue[i];
            if entry.batch.items.is_empty() && entry.batch.kind != Kind::Clear {
                entry.state = State::Done;
                continue;
            }
            let state = match self.client.enqueue(&entry.batch).await? {
                Sent::Task(uid) => State::Enqueued(uid),
                Sent::Rejected(error) => State::Rejected(error),
                Sent::Unanswered(problem) => {
                    // Nothing after it is enqueued yet: parking it is all.
                    let attempts = self.config().max_retries + 1;
                    self.park_batch(i, problem, attempts)?;
                    State::Done
                }
            };
            self.queue[i].state = state;
        }
        Ok(())
    }

    /// Waits for the oldest task out; returns false if there is none.
    pub(super) async fn settle_oldest(&mut self) -> Result<bool> {
        let Some(i) = self
            .queue
            .iter()
            .position(|e| matches!(e.state, State::Enqueued(_) | State::Rejected(_)))
        else {
            return Ok(false);
        };
        self.settle(i).await?;
        while self
            .queue
            .front()
            .is_some_and(|e| matches!(e.state, State::Done))
        {
            self.queue.pop_front();
        }
        Ok(true)
    }

    /// Waits for the task of entry `i` and acts on its outcome.
    async fn settle(&mut self, i: usize) -> Result<()> {
        self.settle_with(i, None).await
    }

    /// Acts on the outcome of entry `i`: `task`, its finished task when it
    /// was looked at already, else waited for.
    pub(super) async fn settle_with(&mut self, i: usize, task: Option<tasks::Task>) -> Result<()> {
        let kind = self.queue[i].batch.kind;
        let outcome = match &self.queue[i].state {
            State::Enqueued(uid) => {
                let task = match task {
                    Some(task) => task,
                    None => self.client.wait_task(*uid).await?,
                };
                tasks::classify(kind, task.status, task.error.as_ref())
            }
            State::Rejected(error) => tasks::classify_error(kind, error),
            State::Unsent | State::Done => return Ok(()),
        };
        let max_retries = self.client.config.max_retries;
        let entry = &mut self.queue[i];
        let what = format!(
            "sink {}: {} {} write(s) to {}",
            self.client.name,
            entry.batch.items.len(),
            kind.action(),
            entry.batch.index
        );
        match outcome {
            Outcome::Done => {
                entry.state = State::Done;
                Ok(())
            }
            Outcome::Retry(problem) => {
                entry.batch.attempts += 1;
                let attempts = entry.batch.attempts;
                if attempts > max_retries {
                    self.park_batch(i, format!("failed {attempts} times: {problem}"), attempts)?;
                    return self.replay(i, Vec::new()).await;
                }
                let batch = entry.batch.clone();
                self.replay(i, vec![batch]).await?;
                self.client
                    .wait(attempts, &format!("{what} failed: {problem}"))
                    .await;
                Ok(())
            }
            Outcome::BadDocuments(problem) if entry.batch.items.len() > 1 => {
                tracing::warn!(
                    "{what} was refused, sending it in halves to find the writes it refuses: {problem}"
                );
                let (first, second) = entry.batch.clone().split();
                self.replay(i, vec![first, second]).await
            }
            Outcome::BadDocuments(problem) => {
                let attempts = entry.batch.attempts + 1;
                self.park_batch(i, problem, attempts)?;
                self.replay(i, Vec::new()).await
            }
            Outcome::Fatal { problem, hint } => {
                Err(Error::new(ErrorKind::Sink, format!("{what} failed: {problem}")).hint(hint))
            }
        }
    }

    /// Parks every write of entry `i` with `problem`. A truncate cannot be
    /// parked: that stays an error (nothing acknowledged).
    fn park_batch(&mut self, i: usize, problem: String, attempts: u32) -> Result<()> {
        let batch = &mut self.queue[i].batch;
        if matches!(batch.kind, Kind::Clear | Kind::ClearTable) {
            return Err(Error::new(
                ErrorKind::Sink,
                format!(
                    "sink {}: deleting the documents of {}: {problem}",
                    self.client.name, batch.index
                ),
            ));
        }
        let (index, kind) = (batch.index.clone(), batch.kind);
        let items = std::mem::take(&mut batch.items);
        tracing::warn!(
            sink = %self.client.name,
            index = %index,
            writes = items.len(),
            "parking writes: {problem}"
        );
        for item in items {
            self.park(&index, kind, item, problem.clone(), attempts)?;
        }
        Ok(())
    }

    /// Puts `replacements` in the place of entry `i`, whose task failed
    /// without applying anything, and marks every later batch of the same
    /// index unsent once its task finished: they are enqueued again after
    /// the replacements, in order.
    async fn replay(&mut self, i: usize, replacements: Vec<Batch>) -> Result<()> {
        let index = self.queue[i].batch.index.clone();
        let mut again = 0;
        for j in i + 1..self.queue.len() {
            if self.queue[j].batch.index != index {
                continue;
            }
            if let State::Enqueued(uid) = self.queue[j].state {
                self.client.wait_task(uid).await?;
            }
            if !matches!(self.queue[j].state, State::Unsent) {
                again += 1;
            }
            self.queue[j].state = State::Unsent;
        }
        if again > 0 {
            tracing::info!(
                sink = %self.client.name,
                index = %index,
                "sending {again} later request(s) again after the failed one, to keep the order of writes"
            );
        }
        let commit = self.queue.remove(i).map_or(self.commits + 1, |e| e.commit);
        for (n, batch) in replacements.into_iter().enumerate() {
            self.queue.insert(
                i + n,
                Entry {
                    batch,
                    state: State::Unsent,
                    commit,
                },
            );
        }
        Ok(())
    }
}

//! A sink that discards everything: measures the pipeline without a search engine.

use crate::error::Result;
use crate::lsn::Lsn;
use crate::model::write::WriteOp;

pub struct NullSink {
    name: String,
}

impl NullSink {
    pub fn new(name: &str) -> NullSink {
        NullSink {
            name: name.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl super::Sink for NullSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, ops: &[WriteOp]) -> Result<()> {
        metrics::counter!("sluice_sink_writes_total", "sink" => self.name.clone())
            .increment(ops.len() as u64);
        Ok(())
    }

    async fn commit(&mut self, _upto: Lsn) -> Result<()> {
        Ok(())
    }
}

//! Reported states on their way to the store: a group-committing writer. (Their per-device rate
//! limit, one state per second, is a [`crate::rate::PerDeviceRate`].)
//!
//! Each report waits until its state is durable, but concurrent reports share one transaction, so
//! a busy fleet costs one database write per batch, not per message.

use ferrocore_model::{DeviceState, NumId};
use ferrocore_store::{Store, StoreError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Pending = (NumId, DeviceState, oneshot::Sender<Result<(), String>>);

/// States written per transaction at most.
const MAX_BATCH: usize = 512;

pub(crate) struct StateWriter {
    tx: mpsc::Sender<Pending>,
}

impl StateWriter {
    /// Starts the writer task; must be called inside a tokio runtime.
    pub(crate) fn spawn(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let states: Vec<(NumId, DeviceState)> = batch.iter().map(|(n, s, _)| (*n, s.clone())).collect();
                let result = store.record_states(&states).await.map_err(|e| e.to_string());
                for (_, _, done) in batch.drain(..) {
                    let _ = done.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    /// Queues the state; the returned future resolves once it is stored.
    pub(crate) async fn submit(
        &self,
        device: NumId,
        state: DeviceState,
    ) -> Result<impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static, StoreError> {
        let (done, stored) = oneshot::channel();
        let gone = || StoreError::Backend("the state writer stopped".into());
        self.tx.send((device, state, done)).await.map_err(|_| gone())?;
        Ok(async move { stored.await.map_err(|_| gone())?.map_err(StoreError::Backend) })
    }
}

//! The queue between hooks and receivers. Behind the [`Outbox`] trait so a
//! durable backend (SQLite, NATS JetStream) can replace the in-memory one.

use crate::delivery::{Delivery, Sender};
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Why the outbox refused deliveries.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The engine is shutting down.
    #[error("the outbox is closed: the engine is shutting down")]
    Closed,
}

/// Accepts deliveries and sees them sent, retried, or failed for good.
pub trait Outbox: Send + Sync + 'static {
    /// Queues deliveries; returns once they are accepted (for a durable
    /// backend: committed). Waits while the queue is full.
    fn enqueue(&self, deliveries: Vec<Delivery>) -> BoxFuture<'_, Result<(), OutboxError>>;
    /// Deliveries accepted and not yet delivered or failed for good.
    fn pending(&self) -> usize;
    /// Resolves once everything accepted so far is delivered or failed.
    fn drained(&self) -> BoxFuture<'_, ()>;
}

/// Keeps the queue in memory: a task per delivery, bounded by a capacity.
pub struct MemoryOutbox {
    sender: Arc<Sender>,
    capacity: Arc<Semaphore>,
    total: usize,
    tasks: TaskTracker,
}

impl MemoryOutbox {
    pub(crate) fn new(sender: Arc<Sender>, capacity: usize) -> MemoryOutbox {
        let total = capacity.max(1);
        MemoryOutbox {
            sender,
            capacity: Arc::new(Semaphore::new(total)),
            total,
            tasks: TaskTracker::new(),
        }
    }
}

impl Outbox for MemoryOutbox {
    fn enqueue(&self, deliveries: Vec<Delivery>) -> BoxFuture<'_, Result<(), OutboxError>> {
        Box::pin(async move {
            for delivery in deliveries {
                let permit = self
                    .capacity
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| OutboxError::Closed)?;
                let sender = self.sender.clone();
                self.tasks.spawn(async move {
                    if let Err(reason) = sender.deliver(&delivery).await {
                        tracing::error!(hook = %delivery.hook, id = %delivery.id, url = %delivery.url, "delivery failed for good: {reason}");
                    }
                    drop(permit);
                });
            }
            Ok(())
        })
    }

    fn pending(&self) -> usize {
        self.total - self.capacity.available_permits()
    }

    fn drained(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.tasks.close();
            self.tasks.wait().await;
            self.tasks.reopen();
        })
    }
}

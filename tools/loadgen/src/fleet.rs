//! Many sockets at once: one tokio task per connection, a bounded number of handshakes in
//! flight, one stop signal for all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::sio::{self, Endpoint};
use crate::tally::{Shared, Tally};
use crate::token::Tokens;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `customer:<id>`, with a customer token for that id.
    Customer(u32),
    /// `cms:dashboard`, with a cms token.
    Cms,
}

pub struct Spec {
    role: Role,
    room: String,
    token: Option<String>,
}

/// Customers `0..customers` in their own rooms, then `cms` sockets in `cms:dashboard`.
pub fn specs(tokens: &Tokens, customers: u32, cms: u32) -> Vec<Spec> {
    let customer = (0..customers).map(|id| Spec {
        role: Role::Customer(id),
        room: format!("customer:{id}"),
        token: tokens.customer(id),
    });
    let staff = (0..cms).map(|n| Spec {
        role: Role::Cms,
        room: "cms:dashboard".into(),
        token: tokens.cms(n),
    });
    customer.chain(staff).collect()
}

pub struct Fleet {
    sockets: Vec<(Role, JoinHandle<Option<Tally>>)>,
    joined: Vec<bool>,
    pub connected: u64,
    /// Failed handshakes by reason.
    pub failures: BTreeMap<String, u64>,
    /// From the first connect to the last join ack (or failure).
    pub secs: f64,
    stop: watch::Sender<bool>,
}

impl Fleet {
    /// Connects and joins every spec, `concurrency` handshakes at a time; returns once each one
    /// has joined or failed. With `shared`, sockets record what they receive.
    pub async fn open(
        endpoint: &Endpoint,
        specs: Vec<Spec>,
        concurrency: usize,
        shared: Option<Arc<Shared>>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, mut ready) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let started = Instant::now();
        let total = specs.len();
        let sockets = specs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                let (endpoint, permits, ready, shared) = (
                    endpoint.clone(),
                    permits.clone(),
                    ready_tx.clone(),
                    shared.clone(),
                );
                let mut stop = stop_rx.clone();
                let task = tokio::spawn(async move {
                    let permit = permits.acquire_owned().await.expect("semaphore open");
                    let joined =
                        sio::connect_and_join(&endpoint, spec.token.as_deref(), &spec.room).await;
                    drop(permit);
                    let mut ws = match joined {
                        Ok(ws) => ws,
                        Err(error) => {
                            let _ = ready.send((index, Err(error)));
                            return None;
                        }
                    };
                    let _ = ready.send((index, Ok(())));
                    let mut tally = Tally::default();
                    let ended_early = sio::pump(&mut ws, &mut stop, |event| {
                        if let Some(shared) = &shared {
                            tally.record(event, shared);
                        }
                    })
                    .await;
                    tally.ended_early = ended_early;
                    Some(tally)
                });
                (spec.role, task)
            })
            .collect();
        drop(ready_tx);

        let (mut connected, mut failures, mut joined) = (0, BTreeMap::new(), vec![false; total]);
        for _ in 0..total {
            match ready.recv().await {
                Some((index, Ok(()))) => {
                    connected += 1;
                    joined[index] = true;
                }
                Some((_, Err(reason))) => *failures.entry(reason).or_insert(0) += 1,
                None => break,
            }
        }
        Self {
            sockets,
            joined,
            connected,
            failures,
            secs: started.elapsed().as_secs_f64(),
            stop,
        }
    }

    /// The roles of the sockets that joined.
    pub fn joined_roles(&self) -> impl Iterator<Item = Role> + '_ {
        self.sockets
            .iter()
            .zip(&self.joined)
            .filter(|(_, joined)| **joined)
            .map(|((role, _), _)| *role)
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// One line per failure reason, most frequent first.
    pub fn describe_failures(&self) -> String {
        let mut reasons: Vec<_> = self.failures.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        reasons
            .iter()
            .take(5)
            .map(|(reason, n)| format!("\n    {n} × {reason}"))
            .collect()
    }

    /// Closes every socket; returns each socket's tally (`None`: it never joined).
    pub async fn close(self) -> Vec<(Role, Option<Tally>)> {
        let _ = self.stop.send(true);
        let mut out = Vec::with_capacity(self.sockets.len());
        for (role, task) in self.sockets {
            let tally = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            out.push((role, tally));
        }
        out
    }
}

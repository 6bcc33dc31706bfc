//! Group commit for the worker hot path: requests of one kind for one job
//! that arrive while a statement runs are gathered, and the next statement
//! serves them all at once.
//!
//! Why: with many workers, each reservation and each report was its own
//! statement and its own commit. The database then spends most of its time
//! starting statements and flushing commits rather than changing rows, and
//! dispatch stays far below what it can do. Gathering costs no latency:
//! an idle [`Combiner`] runs a request at once, alone; only requests that
//! would have queued for the database anyway are gathered, so the busier
//! the job, the larger the groups. Each item keeps its own answer: a group
//! is only a way to send many guarded writes in one round trip.
//!
//! Each group runs in a task of its own (a few at once at most), so a
//! client that hangs up never cuts a group short (its answer is dropped;
//! what the database did for it stands, as if the response had been lost).

use std::{future::Future, sync::Mutex};

use tokio::sync::oneshot;

use crate::error::{AppError, AppResult};

/// What a runner does with one group: answers one output per item, in
/// item order.
pub type GroupResult<O> = AppResult<Vec<O>>;

struct Submission<I, O> {
    items: Vec<I>,
    answer: oneshot::Sender<GroupResult<O>>,
}

struct Queue<I, O> {
    waiting: Vec<Submission<I, O>>,
    /// Runner tasks draining `waiting`.
    running: usize,
}

/// Gathers submissions of items and runs them in groups of at most
/// `max_items` items (a submission larger than that runs alone), with up
/// to `runners` groups in flight at once.
pub struct Combiner<I, O> {
    queue: Mutex<Queue<I, O>>,
    max_items: usize,
    runners: usize,
}

impl<I, O> std::fmt::Debug for Combiner<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combiner")
            .field("max_items", &self.max_items)
            .finish_non_exhaustive()
    }
}

impl<I: Send + 'static, O: Send + 'static> Combiner<I, O> {
    pub fn new(max_items: usize, runners: usize) -> Combiner<I, O> {
        Combiner {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                running: 0,
            }),
            max_items: max_items.max(1),
            runners: runners.max(1),
        }
    }

    /// Runs `items` in the next group and answers their outputs, in order.
    /// `run` serves a whole group; every submitter of one combiner must pass
    /// an equivalent `run` (whichever starts the runner is the one used).
    pub async fn submit<F, Fut>(
        self: &std::sync::Arc<Self>,
        items: Vec<I>,
        run: F,
    ) -> AppResult<Vec<O>>
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = GroupResult<O>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push(Submission { items, answer });
            let start = queue.running < self.runners;
            if start {
                queue.running += 1;
            }
            start
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.drain(run).await });
        }
        answered
            .await
            .map_err(|_| AppError::Internal(anyhow::anyhow!("a grouped statement was dropped")))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<I, O>> {
        // The queue is consistent at every await point, so a poisoned lock
        // (a panic elsewhere while holding it) leaves nothing half-done.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs groups until nothing waits.
    async fn drain<F, Fut>(&self, run: F)
    where
        F: Fn(Vec<I>) -> Fut,
        Fut: Future<Output = GroupResult<O>>,
    {
        // Marks the combiner idle if this task ends early (a panic in `run`,
        // or the runtime shutting down): submissions still waiting then hear
        // an error rather than hang, and the next submission starts a
        // runner again.
        struct Idle<'a, I, O> {
            combiner: &'a Combiner<I, O>,
            armed: bool,
        }
        impl<I, O> Drop for Idle<'_, I, O> {
            fn drop(&mut self) {
                if self.armed {
                    let mut queue = self
                        .combiner
                        .queue
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    queue.running -= 1;
                    if queue.running == 0 {
                        queue.waiting.clear();
                    }
                }
            }
        }
        let mut idle = Idle {
            combiner: self,
            armed: true,
        };
        loop {
            let group = {
                let mut queue = self.lock();
                let mut taken = 0;
                let mut count = 0;
                for submission in &queue.waiting {
                    if count > 0 && taken + submission.items.len() > self.max_items {
                        break;
                    }
                    taken += submission.items.len();
                    count += 1;
                }
                if count == 0 {
                    // Under the lock: a submission after this starts a new
                    // runner.
                    queue.running -= 1;
                    idle.armed = false;
                    return;
                }
                queue.waiting.drain(..count).collect::<Vec<_>>()
            };
            let sizes: Vec<usize> = group.iter().map(|s| s.items.len()).collect();
            let mut answers = Vec::with_capacity(group.len());
            let mut items = Vec::with_capacity(sizes.iter().sum());
            for submission in group {
                items.extend(submission.items);
                answers.push(submission.answer);
            }
            let expected = items.len();
            match run(items).await {
                Ok(outputs) if outputs.len() == expected => {
                    let mut outputs = outputs.into_iter();
                    for (answer, size) in answers.into_iter().zip(sizes) {
                        // A submitter that hung up no longer listens.
                        let _ = answer.send(Ok(outputs.by_ref().take(size).collect()));
                    }
                }
                Ok(outputs) => {
                    let message = format!(
                        "a grouped statement answered {} of {expected} items",
                        outputs.len()
                    );
                    for answer in answers {
                        let _ =
                            answer.send(Err(AppError::Internal(anyhow::anyhow!(message.clone()))));
                    }
                }
                Err(err) => {
                    for answer in answers {
                        let _ = answer.send(Err(shared(&err)));
                    }
                }
            }
        }
    }
}

/// A copy of a group's error for each of its submitters: the kind that
/// decides the status code is kept, the rest becomes an internal error
/// with the same message.
fn shared(err: &AppError) -> AppError {
    match err {
        AppError::Unavailable(message) => AppError::Unavailable(message.clone()),
        AppError::Conflict(message) => AppError::Conflict(message.clone()),
        AppError::NotFound(message) => AppError::NotFound(message.clone()),
        AppError::BadRequest(message) => AppError::BadRequest(message.clone()),
        other => AppError::Internal(anyhow::anyhow!("{other:#}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// While a group runs, later submissions wait and then run together,
    /// each getting exactly its own outputs back.
    #[tokio::test]
    async fn submissions_that_arrive_during_a_run_share_the_next_group() {
        let combiner = Arc::new(Combiner::<u32, u32>::new(100, 1));
        let groups = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let (release, released) = tokio::sync::watch::channel(false);
        let run = {
            let groups = groups.clone();
            move |items: Vec<u32>| {
                let groups = groups.clone();
                let mut released = released.clone();
                async move {
                    groups.lock().unwrap().push(items.clone());
                    // The first group holds the runner until released.
                    let _ = released.wait_for(|r| *r).await;
                    Ok(items.into_iter().map(|i| i * 10).collect())
                }
            }
        };
        let first = tokio::spawn({
            let (combiner, run) = (combiner.clone(), run.clone());
            async move { combiner.submit(vec![1], run).await }
        });
        while groups.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let later: Vec<_> = (2..5)
            .map(|i| {
                let (combiner, run) = (combiner.clone(), run.clone());
                tokio::spawn(async move { combiner.submit(vec![i, i + 100], run).await })
            })
            .collect();
        while combiner.lock().waiting.len() < 3 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), vec![10]);
        for (i, handle) in (2..5).zip(later) {
            assert_eq!(handle.await.unwrap().unwrap(), vec![i * 10, (i + 100) * 10]);
        }
        let groups = groups.lock().unwrap().clone();
        assert_eq!(groups, vec![vec![1], vec![2, 102, 3, 103, 4, 104]]);
        assert_eq!(combiner.lock().running, 0);
    }

    /// Groups never exceed the item limit, except a single oversized
    /// submission, which runs alone.
    #[tokio::test]
    async fn groups_respect_the_item_limit() {
        let combiner = Arc::new(Combiner::<u32, u32>::new(3, 1));
        let largest = Arc::new(AtomicUsize::new(0));
        let run = {
            let largest = largest.clone();
            move |items: Vec<u32>| {
                largest.fetch_max(items.len(), Ordering::SeqCst);
                async move {
                    tokio::task::yield_now().await;
                    Ok(items)
                }
            }
        };
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (combiner, run) = (combiner.clone(), run.clone());
                tokio::spawn(async move { combiner.submit(vec![i, i], run).await })
            })
            .collect();
        for (i, handle) in (0..20).zip(handles) {
            assert_eq!(handle.await.unwrap().unwrap(), vec![i, i]);
        }
        assert_eq!(largest.load(Ordering::SeqCst), 2);
        let alone = combiner.submit(vec![7; 5], run).await.unwrap();
        assert_eq!(alone, vec![7; 5]);
        assert_eq!(largest.load(Ordering::SeqCst), 5);
    }

    /// A failed group answers its error to each of its submitters, and the
    /// combiner goes on serving.
    #[tokio::test]
    async fn a_failed_group_fails_each_submitter_and_the_next_group_runs() {
        let combiner = Arc::new(Combiner::<u32, u32>::new(10, 1));
        let err = combiner
            .submit(vec![1], |_items: Vec<u32>| async {
                Err(AppError::Unavailable("database down".to_owned()))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::Unavailable(m) if m == "database down"));
        let wrong = combiner
            .submit(vec![1, 2], |_items: Vec<u32>| async { Ok(vec![1]) })
            .await
            .unwrap_err();
        assert!(matches!(wrong, AppError::Internal(_)), "{wrong:?}");
        let ok = combiner
            .submit(vec![3], |items: Vec<u32>| async move { Ok(items) })
            .await
            .unwrap();
        assert_eq!(ok, vec![3]);
    }

    /// A runner that panics leaves the combiner usable, and the submitter
    /// hears an error instead of waiting forever.
    #[tokio::test]
    async fn a_panicking_run_leaves_the_combiner_usable() {
        let combiner = Arc::new(Combiner::<u32, u32>::new(10, 1));
        let err = combiner
            .submit(vec![1], |_items: Vec<u32>| async {
                panic!("a bug in a runner");
                #[allow(unreachable_code)]
                Ok(Vec::new())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::Internal(_)));
        let ok = combiner
            .submit(vec![3], |items: Vec<u32>| async move { Ok(items) })
            .await
            .unwrap();
        assert_eq!(ok, vec![3]);
    }
}

//! Waiting for a job's hosts and stopping them. The job completes when every host exits 0;
//! the first failure or stop ends it, and the hosts still running then get SIGTERM, the
//! grace period, and SIGKILL (SageMaker's stop contract, DESIGN §4). Supervision sees the
//! containers only through [`Hosts`], so its timing is tested with paused time and no Docker.

use crate::docker::{DockerError, Exit};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why the containers were asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopCause {
    /// Ctrl-C or SIGTERM to smlocal.
    Shutdown,
    /// StopTrainingJob or `smlocal stop`.
    Requested,
    MaxRuntime,
    /// A replayed spot interruption (`--interrupt-after`): the job restarts.
    Interrupted,
}

impl StopCause {
    pub(crate) fn message(self) -> &'static str {
        match self {
            StopCause::Shutdown | StopCause::Requested | StopCause::Interrupted => "Stopping the training job",
            StopCause::MaxRuntime => "Stopping the training job: MaxRuntimeInSeconds exceeded",
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every host exited 0.
    Completed,
    /// The first host to exit non-zero (its index among the job's hosts) and how it exited.
    Failed {
        host: usize,
        exit: Exit,
    },
    Stopped(StopCause),
    /// A Pipe mode feed could not read its channel: the job fails with its reason.
    InputFailed,
}

/// What supervision needs of the running containers, host by host (in the job's order).
pub(crate) trait Hosts {
    fn count(&self) -> usize;
    /// Resolves when the host's container has exited.
    fn wait(&self, host: usize) -> BoxFuture<'static, Result<Exit, DockerError>>;
    fn signal(&self, host: usize, signal: &'static str) -> BoxFuture<'_, Result<(), DockerError>>;
}

/// What may end an attempt besides its hosts: the tokens and the two timers.
pub(crate) struct Stops<'a> {
    pub(crate) shutdown: &'a CancellationToken,
    pub(crate) requested: &'a CancellationToken,
    /// `MaxRuntimeInSeconds`, counted from the first start across restarts.
    pub(crate) deadline: Option<Instant>,
    /// When to replay a spot interruption.
    pub(crate) interrupt: Option<Instant>,
    /// Cancelled when a Pipe mode feed failed.
    pub(crate) input_failed: Option<&'a CancellationToken>,
}

type Waits = futures::stream::FuturesUnordered<BoxFuture<'static, (usize, Result<Exit, DockerError>)>>;

/// One attempt's hosts, watched from their start to their last exit.
pub(crate) struct Supervisor<'h, H: Hosts> {
    hosts: &'h H,
    waits: Waits,
    exits: Vec<Option<Exit>>,
}

impl<'h, H: Hosts> Supervisor<'h, H> {
    /// Starts waiting for every host.
    pub(crate) fn new(hosts: &'h H) -> Self {
        let waits = (0..hosts.count())
            .map(|i| {
                let wait = hosts.wait(i);
                Box::pin(async move { (i, wait.await) }) as BoxFuture<'static, _>
            })
            .collect();
        Supervisor { hosts, waits, exits: vec![None; hosts.count()] }
    }

    /// Hosts that have not exited yet.
    pub(crate) fn running(&self) -> usize {
        self.waits.len()
    }

    /// Waits until every host has exited 0, one has failed, or a stop comes.
    pub(crate) async fn until_end(&mut self, stops: &Stops<'_>) -> Result<Ended, DockerError> {
        let at = |when: Option<Instant>| async move {
            match when {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let (max_runtime, interrupt) = (at(stops.deadline), at(stops.interrupt));
        let input_failed = async {
            match stops.input_failed {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(max_runtime, interrupt, input_failed);
        while !self.waits.is_empty() {
            tokio::select! {
                Some((i, exit)) = self.waits.next() => {
                    let exit = exit?;
                    self.exits[i] = Some(exit);
                    if exit.code != 0 {
                        return Ok(Ended::Failed { host: i, exit });
                    }
                }
                () = stops.shutdown.cancelled() => return Ok(Ended::Stopped(StopCause::Shutdown)),
                () = stops.requested.cancelled() => return Ok(Ended::Stopped(StopCause::Requested)),
                () = &mut max_runtime => return Ok(Ended::Stopped(StopCause::MaxRuntime)),
                () = &mut interrupt => return Ok(Ended::Stopped(StopCause::Interrupted)),
                () = &mut input_failed => return Ok(Ended::InputFailed),
            }
        }
        Ok(Ended::Completed)
    }

    /// SIGTERM to every host still running, then SIGKILL to those still running after
    /// `grace`; returns when all have exited, with the hosts SIGKILL ended.
    /// `hurry` cuts the grace short (a second Ctrl-C).
    pub(crate) async fn stop_rest(
        &mut self,
        grace: Duration,
        hurry: &CancellationToken,
    ) -> Result<Vec<usize>, DockerError> {
        for i in self.still_running() {
            self.hosts.signal(i, "SIGTERM").await?;
        }
        let grace_over = tokio::time::sleep(grace);
        tokio::pin!(grace_over);
        while !self.waits.is_empty() {
            tokio::select! {
                Some((i, exit)) = self.waits.next() => self.exits[i] = Some(exit?),
                () = &mut grace_over => break,
                () = hurry.cancelled() => break,
            }
        }
        let mut sigkilled = Vec::new();
        if self.waits.is_empty() {
            return Ok(sigkilled);
        }
        tracing::warn!(
            "{} host(s) did not exit within {}s of SIGTERM; sending SIGKILL",
            self.waits.len(),
            grace.as_secs()
        );
        let killed = self.still_running();
        for &i in &killed {
            self.hosts.signal(i, "SIGKILL").await?;
        }
        while let Some((i, exit)) = self.waits.next().await {
            let exit = exit?;
            self.exits[i] = Some(exit);
            // 128 + SIGKILL: it was still running when the signal came.
            if exit.code == 137 && killed.contains(&i) {
                sigkilled.push(i);
            }
        }
        sigkilled.sort_unstable();
        Ok(sigkilled)
    }

    fn still_running(&self) -> Vec<usize> {
        self.exits.iter().enumerate().filter(|(_, e)| e.is_none()).map(|(i, _)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;
    use tokio::sync::Notify;

    /// A host that exits on its own after `runs_for` (with `code`), on SIGTERM if it honours
    /// it, and always on SIGKILL.
    struct Fake {
        runs_for: Option<Duration>,
        code: i64,
        honours_sigterm: bool,
        term: Arc<Notify>,
        kill: Arc<Notify>,
    }

    fn host(runs_for: Option<u64>, code: i64, honours_sigterm: bool) -> Fake {
        Fake {
            runs_for: runs_for.map(Duration::from_secs),
            code,
            honours_sigterm,
            term: Arc::default(),
            kill: Arc::default(),
        }
    }

    struct FakeHosts {
        hosts: Vec<Fake>,
        /// (seconds since the start, host, signal), in the order they were sent.
        signals: Mutex<Vec<(u64, usize, &'static str)>>,
        started: Instant,
    }

    impl FakeHosts {
        fn new(hosts: Vec<Fake>) -> Self {
            FakeHosts { hosts, signals: Mutex::default(), started: Instant::now() }
        }

        fn signals(&self) -> Vec<(u64, usize, &'static str)> {
            self.signals.lock().unwrap().clone()
        }
    }

    impl Hosts for FakeHosts {
        fn count(&self) -> usize {
            self.hosts.len()
        }

        fn wait(&self, i: usize) -> BoxFuture<'static, Result<Exit, DockerError>> {
            let h = &self.hosts[i];
            let (runs_for, code, honours, term, kill) =
                (h.runs_for, h.code, h.honours_sigterm, h.term.clone(), h.kill.clone());
            Box::pin(async move {
                let exits = async {
                    match runs_for {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                let terminated = async {
                    term.notified().await;
                    if !honours {
                        std::future::pending::<()>().await;
                    }
                };
                let code = tokio::select! {
                    () = exits => code,
                    () = terminated => 143,
                    () = kill.notified() => 137,
                };
                Ok(Exit { code, oom_killed: false })
            })
        }

        fn signal(&self, i: usize, signal: &'static str) -> BoxFuture<'_, Result<(), DockerError>> {
            self.signals.lock().unwrap().push((self.started.elapsed().as_secs(), i, signal));
            match signal {
                "SIGTERM" => self.hosts[i].term.notify_one(),
                _ => self.hosts[i].kill.notify_one(),
            }
            Box::pin(async { Ok(()) })
        }
    }

    fn tokens() -> (CancellationToken, CancellationToken) {
        (CancellationToken::new(), CancellationToken::new())
    }

    #[tokio::test(start_paused = true)]
    async fn the_job_completes_when_every_host_exits_zero() {
        let hosts = FakeHosts::new(vec![host(Some(3), 0, true), host(Some(7), 0, true)]);
        let (shutdown, requested) = tokens();
        let stops =
            Stops { shutdown: &shutdown, requested: &requested, deadline: None, interrupt: None, input_failed: None };
        let mut supervisor = Supervisor::new(&hosts);
        assert_eq!(supervisor.until_end(&stops).await.unwrap(), Ended::Completed);
        assert_eq!(hosts.started.elapsed().as_secs(), 7, "it waits for the slowest host");
        assert!(hosts.signals().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn max_runtime_stops_at_the_deadline_and_sigkills_after_the_grace() {
        // algo-1 honours SIGTERM; algo-2 ignores it and is killed when the grace runs out.
        let hosts = FakeHosts::new(vec![host(None, 0, true), host(None, 0, false)]);
        let (shutdown, requested) = tokens();
        let deadline = Some(Instant::now() + Duration::from_secs(30));
        let stops = Stops { shutdown: &shutdown, requested: &requested, deadline, interrupt: None, input_failed: None };
        let mut supervisor = Supervisor::new(&hosts);
        assert_eq!(supervisor.until_end(&stops).await.unwrap(), Ended::Stopped(StopCause::MaxRuntime));
        assert_eq!(hosts.started.elapsed().as_secs(), 30);
        let sigkilled = supervisor.stop_rest(Duration::from_secs(120), &CancellationToken::new()).await.unwrap();
        assert_eq!(sigkilled, [1]);
        assert_eq!(hosts.signals(), [(30, 0, "SIGTERM"), (30, 1, "SIGTERM"), (150, 1, "SIGKILL")]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_failure_ends_the_job_and_the_others_get_sigterm() {
        let hosts = FakeHosts::new(vec![host(None, 0, true), host(Some(5), 3, true), host(Some(9), 4, true)]);
        let (shutdown, requested) = tokens();
        let stops =
            Stops { shutdown: &shutdown, requested: &requested, deadline: None, interrupt: None, input_failed: None };
        let mut supervisor = Supervisor::new(&hosts);
        let ended = supervisor.until_end(&stops).await.unwrap();
        assert_eq!(ended, Ended::Failed { host: 1, exit: Exit { code: 3, oom_killed: false } });
        assert_eq!(supervisor.running(), 2);
        assert!(supervisor.stop_rest(Duration::from_secs(120), &CancellationToken::new()).await.unwrap().is_empty());
        assert_eq!(hosts.signals(), [(5, 0, "SIGTERM"), (5, 2, "SIGTERM")]);
        assert_eq!(hosts.started.elapsed().as_secs(), 5, "hosts that honour SIGTERM end at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_request_wins_over_a_later_deadline_and_the_grace_is_waited_in_full() {
        let hosts = FakeHosts::new(vec![host(None, 0, false)]);
        let (shutdown, requested) = tokens();
        let deadline = Some(Instant::now() + Duration::from_secs(60));
        let stops = Stops { shutdown: &shutdown, requested: &requested, deadline, interrupt: None, input_failed: None };
        let stopper = requested.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            stopper.cancel();
        });
        let mut supervisor = Supervisor::new(&hosts);
        assert_eq!(supervisor.until_end(&stops).await.unwrap(), Ended::Stopped(StopCause::Requested));
        assert_eq!(supervisor.stop_rest(Duration::from_secs(2), &CancellationToken::new()).await.unwrap(), [0]);
        assert_eq!(hosts.signals(), [(10, 0, "SIGTERM"), (12, 0, "SIGKILL")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_interrupt_sigkills_without_waiting_out_the_grace() {
        let hosts = FakeHosts::new(vec![host(None, 0, false)]);
        let (shutdown, requested) = tokens();
        let stops =
            Stops { shutdown: &shutdown, requested: &requested, deadline: None, interrupt: None, input_failed: None };
        let (first, hurry) = (shutdown.clone(), CancellationToken::new());
        let second = hurry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            first.cancel();
            tokio::time::sleep(Duration::from_secs(3)).await;
            second.cancel();
        });
        let mut supervisor = Supervisor::new(&hosts);
        assert_eq!(supervisor.until_end(&stops).await.unwrap(), Ended::Stopped(StopCause::Shutdown));
        assert_eq!(supervisor.stop_rest(Duration::from_secs(120), &hurry).await.unwrap(), [0]);
        assert_eq!(hosts.signals(), [(1, 0, "SIGTERM"), (4, 0, "SIGKILL")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replayed_interruption_fires_after_its_delay() {
        let hosts = FakeHosts::new(vec![host(Some(100), 0, true)]);
        let (shutdown, requested) = tokens();
        let interrupt = Some(Instant::now() + Duration::from_secs(4));
        let stops = Stops { shutdown: &shutdown, requested: &requested, deadline: None, interrupt, input_failed: None };
        let mut supervisor = Supervisor::new(&hosts);
        assert_eq!(supervisor.until_end(&stops).await.unwrap(), Ended::Stopped(StopCause::Interrupted));
        assert!(supervisor.stop_rest(Duration::from_secs(120), &CancellationToken::new()).await.unwrap().is_empty());
        assert_eq!(hosts.started.elapsed().as_secs(), 4);
    }
}

//! The emulated tasker-core services of the end-to-end fixtures, and the two span
//! vocabularies they speak.

/// One emulated service (its `service.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Svc {
    Orchestration = 0,
    RustWorker = 1,
    RubyWorker = 2,
}

impl Svc {
    pub const ALL: [Svc; 3] = [Svc::Orchestration, Svc::RustWorker, Svc::RubyWorker];

    pub fn name(self) -> &'static str {
        match self {
            Svc::Orchestration => "tasker-orchestration",
            Svc::RustWorker => "tasker-rust-worker",
            Svc::RubyWorker => "tasker-ruby-worker",
        }
    }

    /// What the handler_language sources yield for this service's spans (the service.name
    /// regex); None for orchestration.
    pub fn worker_language(self) -> Option<&'static str> {
        match self {
            Svc::Orchestration => None,
            Svc::RustWorker => Some("rust"),
            Svc::RubyWorker => Some("ruby"),
        }
    }

    /// The `handler_language` label spanlens must derive (service.name regex, else unknown).
    pub fn language(self) -> &'static str {
        self.worker_language().unwrap_or("unknown")
    }
}

/// The span names a fixture uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vocab {
    /// The design note's span names (step_claim, execute_handler, ...).
    Nominal,
    /// What tasker-core emits today (read_messages, worker.step_execution, ...).
    Real,
}

/// Microseconds of one step: claim, worker.step_execution, the handler (execute_handler),
/// submission, the queue gap to result processing, and the processing. Which of them a
/// fixture traces depends on its vocabulary.
#[derive(Clone, Copy)]
pub struct Times {
    pub claim: u64,
    pub exec: u64,
    pub handler: u64,
    pub submit: u64,
    pub gap: u64,
    pub process: u64,
}

/// [`Times`] in table order, for literal fixture tables.
pub const fn times(
    claim: u64,
    exec: u64,
    handler: u64,
    submit: u64,
    gap: u64,
    process: u64,
) -> Times {
    Times {
        claim,
        exec,
        handler,
        submit,
        gap,
        process,
    }
}

/// Which rows one export request of a service carries.
pub type Pick<R> = fn(&R) -> bool;

/// Splits `rows` into export requests by `plan`, in its order: each entry takes, of its
/// service's rows not taken yet, those its `pick` chooses (never none). Every row must be
/// taken exactly once.
pub fn plan_requests<R>(
    rows: &[R],
    svc: impl Fn(&R) -> Svc,
    plan: &[(Svc, Pick<R>)],
) -> Vec<(Svc, Vec<usize>)> {
    let mut sent = vec![false; rows.len()];
    let mut requests = Vec::new();
    for &(of, pick) in plan {
        let picked: Vec<usize> = (0..rows.len())
            .filter(|i| !sent[*i] && svc(&rows[*i]) == of && pick(&rows[*i]))
            .collect();
        assert!(!picked.is_empty(), "an empty request for {of:?}");
        for &i in &picked {
            sent[i] = true;
        }
        requests.push((of, picked));
    }
    assert!(sent.iter().all(|s| *s), "every row is sent");
    requests
}

/// The stage the default profile's rules give a span named `name` whose `queue` attribute is
/// `queue` (None: generic span metrics only). `read_messages` is a step claim only from a
/// worker queue (`worker_*_queue`).
pub fn stage_of(name: &str, queue: Option<&str>) -> Option<&'static str> {
    Some(match name {
        "step_claim" => "step_claim",
        "read_messages"
            if queue.is_some_and(|q| q.starts_with("worker_") && q.ends_with("_queue")) =>
        {
            "step_claim"
        }
        "execute_handler" | "worker.step_execution" => "handler_execution",
        "resolve" => "handler_resolution",
        "submit_result" | "worker.step_completion_received" => "result_submission",
        "create_task" | "create_task_from_request" => "task_creation",
        "enqueue_steps" | "enqueue_ready_steps" => "step_enqueueing",
        "process_result" | "handle_step_execution_result" => "result_processing",
        "finalize_task" => "task_finalization",
        _ => return None,
    })
}

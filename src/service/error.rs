//! Why a request was not answered OK. Each stage of a request (see [`crate::service`]) returns
//! one of these; [`ServiceError::status`] is the status the peer reads, and the message is the
//! variant's text, so a new refusal is one variant, not a status and a string kept in step.

use crate::engine::error::EngineError;
use crate::sched::queue::{JobError, SubmitError};
use crate::service::tokenize_pool::TokenizeError;
use crate::wire::protocol::{pb, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed, speaks another version, is over a limit, asks for options the
    /// model cannot give, or none of its inputs can be computed.
    #[error("{0}")]
    Invalid(String),
    /// The tokenizer pool has no room for the request now, or the tokenizer failed.
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    /// The admission queue is full.
    #[error("queue is full ({capacity} requests waiting); retry later")]
    QueueFull { capacity: usize },
    /// The server is draining: the request was refused or dropped from the queue.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The engine failed a pass and then its health probe; the message says why (see
    /// [`crate::sched::Scheduler::unhealthy`]).
    #[error("engine unhealthy: {0}")]
    Unhealthy(String),
    /// The request's own deadline passed before a forward pass took it.
    #[error("deadline of {deadline_us} µs passed while queued")]
    DeadlineExceeded { deadline_us: u64 },
    /// The forward pass that held the request failed.
    #[error(transparent)]
    Engine(EngineError),
    /// The worker dropped the request's reply without answering: a bug, not a peer's doing.
    #[error("engine worker stopped")]
    WorkerStopped,
}

impl ServiceError {
    /// The status the peer is answered with.
    pub fn status(&self) -> pb::Status {
        match self {
            ServiceError::Invalid(_) => pb::Status::InvalidArgument,
            ServiceError::Tokenize(TokenizeError::Busy { .. }) | ServiceError::QueueFull { .. } => {
                pb::Status::Overloaded
            }
            ServiceError::Tokenize(TokenizeError::Failed(_))
            | ServiceError::Engine(_)
            | ServiceError::WorkerStopped => pb::Status::Internal,
            ServiceError::ShuttingDown | ServiceError::Unhealthy(_) => pb::Status::Unavailable,
            ServiceError::DeadlineExceeded { .. } => pb::Status::DeadlineExceeded,
        }
    }

    /// A job's failure, for a request that had asked for `deadline_us` (0: none).
    pub fn of_job(e: JobError, deadline_us: u64) -> Self {
        match e {
            JobError::DeadlineExceeded => ServiceError::DeadlineExceeded { deadline_us },
            JobError::ShuttingDown => ServiceError::ShuttingDown,
            JobError::Engine(e) => ServiceError::Engine(e),
            JobError::Unhealthy(why) => ServiceError::Unhealthy(why),
        }
    }
}

impl From<SubmitError> for ServiceError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Overloaded { capacity } => ServiceError::QueueFull { capacity },
            SubmitError::ShuttingDown => ServiceError::ShuttingDown,
            SubmitError::Unhealthy(why) => ServiceError::Unhealthy(why),
        }
    }
}

impl From<Refusal> for ServiceError {
    /// A refusal is always INVALID_ARGUMENT (see [`Refusal::invalid`]); its id is the caller's
    /// to keep.
    fn from(r: Refusal) -> Self {
        debug_assert_eq!(r.status, pb::Status::InvalidArgument);
        ServiceError::Invalid(r.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts peers have always read (tests/daemon asserts several of them).
    #[test]
    fn statuses_and_messages_are_the_ones_peers_read() {
        let cases = [
            (
                ServiceError::from(SubmitError::Overloaded { capacity: 3 }),
                pb::Status::Overloaded,
                "queue is full (3 requests waiting); retry later",
            ),
            (
                SubmitError::ShuttingDown.into(),
                pb::Status::Unavailable,
                "server is shutting down",
            ),
            (
                SubmitError::Unhealthy("probe failed".into()).into(),
                pb::Status::Unavailable,
                "engine unhealthy: probe failed",
            ),
            (
                ServiceError::of_job(JobError::DeadlineExceeded, 250),
                pb::Status::DeadlineExceeded,
                "deadline of 250 µs passed while queued",
            ),
            (
                ServiceError::of_job(JobError::ShuttingDown, 0),
                pb::Status::Unavailable,
                "server is shutting down",
            ),
            (
                ServiceError::of_job(JobError::Engine(EngineError("boom".into())), 0),
                pb::Status::Internal,
                "inference failed: boom",
            ),
            (
                ServiceError::of_job(JobError::Unhealthy("gone".into()), 0),
                pb::Status::Unavailable,
                "engine unhealthy: gone",
            ),
            (
                TokenizeError::Busy { budget: 9 }.into(),
                pb::Status::Overloaded,
                "9 bytes of requests are already waiting for a tokenizer; retry later",
            ),
            (
                TokenizeError::Failed("x".into()).into(),
                pb::Status::Internal,
                "the tokenizer failed: x",
            ),
            (
                ServiceError::WorkerStopped,
                pb::Status::Internal,
                "engine worker stopped",
            ),
            (
                Refusal::invalid(4, "request has no body").into(),
                pb::Status::InvalidArgument,
                "request has no body",
            ),
        ];
        for (e, status, message) in cases {
            assert_eq!((e.status(), e.to_string().as_str()), (status, message));
        }
    }
}

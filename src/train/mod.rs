//! Training: one step of a recipe's objective ([`step`]), and the loop that runs the
//! epochs, writes the run directory and resumes ([`fit`]).
//!
//! `recipe bench` times [`step::Trainer::step`], the same step `recipe run` takes.

pub mod fit;
pub mod resume;
pub mod rundir;
pub mod signal;
pub mod step;

use std::fmt;

use crate::checkpoint::CheckpointError;
use crate::data::DataError;
use crate::nn::ModelError;
use crate::objective::ObjectiveError;
use crate::optim::OptimError;
use crate::optim::schedule::ScheduleError;

/// Why training cannot start or go on.
#[derive(Debug)]
pub enum TrainError {
    /// The model cannot be built or run.
    Model(ModelError),
    /// The objective rejected its inputs or configuration.
    Objective(ObjectiveError),
    /// The optimiser rejected a step.
    Optim(OptimError),
    /// The schedule cannot be resolved.
    Schedule(ScheduleError),
    /// Reading or writing a checkpoint failed.
    Checkpoint(CheckpointError),
    /// The data could not be read or made into batches.
    Data(DataError),
    /// The loss became NaN or infinite.
    Diverged {
        /// The optimiser step (0-based) whose loss was not finite.
        step: u64,
        /// Its epoch (0-based).
        epoch: usize,
        /// The loss value.
        loss: f32,
    },
    /// Anything else, with a message for the user.
    Other(String),
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::Model(e) => write!(f, "{e}"),
            TrainError::Objective(e) => write!(f, "{e}"),
            TrainError::Optim(e) => write!(f, "{e}"),
            TrainError::Schedule(e) => write!(f, "{e}"),
            TrainError::Checkpoint(e) => write!(f, "{e}"),
            TrainError::Data(e) => write!(f, "{e}"),
            TrainError::Diverged { step, epoch, loss } => write!(
                f,
                "the loss diverged: {loss} at step {} (epoch {}); lower the learning rate or raise the temperature",
                step + 1,
                epoch + 1
            ),
            TrainError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for TrainError {}

macro_rules! from_err {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for TrainError {
            fn from(e: $t) -> Self {
                TrainError::$v(e)
            }
        }
    )*};
}
from_err!(ModelError => Model, ObjectiveError => Objective, OptimError => Optim,
    ScheduleError => Schedule, CheckpointError => Checkpoint, DataError => Data);

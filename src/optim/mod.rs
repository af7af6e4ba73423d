//! Optimisers and learning-rate schedules over the parameter store.

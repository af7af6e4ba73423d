//! The engine: runtime-shaped layers over dfdx, the project's own differentiable ops,
//! and the named parameter store.

pub mod ops;
pub mod params;

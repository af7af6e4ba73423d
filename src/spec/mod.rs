//! The recipe language: typed sections, loading with positions, and semantic checks.

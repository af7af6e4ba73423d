//! Diagnostics: what is wrong in a recipe, where, and how to fix it.

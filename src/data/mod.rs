//! Datasets and the batch loader: where images come from and how they reach the model.

pub mod image;

pub use image::Image;

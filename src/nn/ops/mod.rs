//! The project's own differentiable ops (conv2d, pooling, batch norm, …).

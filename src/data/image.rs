//! The in-memory image every dataset yields and every augmentation consumes.

/// A decoded image: planar (channel-major, CHW) `f32` samples in `[0, 1]`.
///
/// Planar layout keeps per-channel colour ops contiguous and matches the `(C, H, W)`
/// layout the model consumes, so a batch is a plain concatenation of images.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Number of channels: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `channels * height * width` samples, channel-major then row-major.
    pub data: Vec<f32>,
}

impl Image {
    /// An image of the given size filled with `value`.
    pub fn filled(channels: usize, height: usize, width: usize, value: f32) -> Self {
        Image {
            channels,
            height,
            width,
            data: vec![value; channels * height * width],
        }
    }

    /// Wraps planar samples; `None` if `data` has the wrong length.
    pub fn from_planar(
        channels: usize,
        height: usize,
        width: usize,
        data: Vec<f32>,
    ) -> Option<Self> {
        (data.len() == channels * height * width).then_some(Image {
            channels,
            height,
            width,
            data,
        })
    }

    /// The samples of channel `c` (row-major `height * width`).
    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }

    /// Mutable samples of channel `c`.
    pub fn plane_mut(&mut self, c: usize) -> &mut [f32] {
        let n = self.height * self.width;
        &mut self.data[c * n..(c + 1) * n]
    }

    /// The sample at channel `c`, row `y`, column `x`.
    pub fn get(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }
}

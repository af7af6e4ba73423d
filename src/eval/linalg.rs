//! A bounds-checked wrapper over `gemm` for the host-side products of this module.

use gemm::Parallelism;

/// A row-major matrix view: `rows × cols` with the element `(r, c)` at
/// `data[r * row_stride + c * col_stride]`, so a transpose is a swap of the strides.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A dense row-major `rows × cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst = a · b` (or `dst += a · b` when `accumulate`), `dst` dense row-major
/// `a.rows × b.cols`. `parallel` lets gemm split the output over rayon's threads (the
/// sums over the inner dimension stay in one thread, in a fixed order).
pub(crate) fn matmul(dst: &mut [f32], a: View<'_>, b: View<'_>, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions differ");
    assert_eq!(dst.len(), m * n, "destination has the wrong size");
    assert!(a.fits() && b.fits(), "matrix view exceeds its data");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let par = if parallel {
        Parallelism::Rayon(rayon::current_num_threads().max(1))
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every element gemm reads or writes inside the
    // slices: dst is m×n dense, a and b reach at most their last valid index.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_transposes_match_the_definition() {
        // a: 2×3, b: 2×3, so a · bᵀ is 2×2.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let mut d = vec![0.0; 4];
        matmul(
            &mut d,
            View::new(&a, 2, 3),
            View::new(&b, 2, 3).t(),
            false,
            false,
        );
        assert_eq!(d, vec![-2.0, 4.0, -2.0, 13.0]);
        // aᵀ · b is 3×3; accumulate onto ones.
        let mut e = vec![1.0; 9];
        matmul(
            &mut e,
            View::new(&a, 2, 3).t(),
            View::new(&b, 2, 3),
            true,
            true,
        );
        assert_eq!(e, vec![10.0, 5.0, 0.0, 13.0, 6.0, -1.0, 16.0, 7.0, -2.0]);
    }
}

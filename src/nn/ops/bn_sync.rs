//! The hook synchronised batch norm needs (`train.sync_batch_norm`): while one is
//! installed on the current thread, the CPU batch-norm kernel in training mode hands its
//! per-channel batch moments and, in backward, its per-channel gradient sums to the hook
//! to be combined over the ranks of a data-parallel job. Nothing else in the op
//! changes; with no hook installed (the default) the op pays one thread-local read.
//!
//! The CPU kernel honours the hook; the composed (CUDA) form does not.

use std::cell::RefCell;
use std::rc::Rc;

/// Combines batch-norm statistics over ranks.
pub trait BnSync {
    /// `mean` and `var` (biased) are this rank's per-channel moments over `count`
    /// values each; replaces them by the moments over all ranks and returns the total
    /// count.
    fn moments(&self, mean: &mut [f32], var: &mut [f32], count: usize) -> usize;
    /// Replaces the per-channel sums `Σ g` and `Σ g·(x − mean)` by their sums over ranks.
    fn grad_sums(&self, sum_gy: &mut [f32], sum_gxc: &mut [f32]);
}

thread_local! {
    static HOOK: RefCell<Option<Rc<dyn BnSync>>> = const { RefCell::new(None) };
}

/// Runs `f` with `hook` installed on this thread (the forward pass and the backward
/// pass of one training step); the previous hook is restored afterwards, also on panic.
pub fn with_bn_sync<R>(hook: Rc<dyn BnSync>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Rc<dyn BnSync>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            HOOK.with(|h| *h.borrow_mut() = prev);
        }
    }
    let prev = HOOK.with(|h| h.borrow_mut().replace(hook));
    let _restore = Restore(prev);
    f()
}

/// The hook installed on this thread, if any.
pub fn current() -> Option<Rc<dyn BnSync>> {
    HOOK.with(|h| h.borrow().clone())
}

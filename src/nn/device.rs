//! The device a process computes on, chosen once.
//!
//! Everything device-specific is a method of [`EngineDevice`] (the ops, the optimiser
//! update, the gradient transfer of the all-reduce), and everything above it is
//! generic over `D: EngineDevice`. What is left is to go from the device a recipe
//! asks for, known only at run time, to a call of such a generic function.
//! [`DeviceChoice`] holds the opened device; [`DeviceChoice::dispatch`] hands it to an
//! [`OnDevice`] job, whose `run<D: EngineDevice>` is the generic function. This is
//! the one `match` over devices, and with [`DeviceChoice::cuda`] the one place the
//! `cuda` feature is tested outside the device's own ops: callers carry no `cfg`.
//! (Candle dispatches its backends the same way, in one place.)
//!
//! ```
//! use recipe::nn::EngineDevice;
//! use recipe::nn::device::{DeviceChoice, OnDevice};
//!
//! /// A job: its fields are the arguments, `run` the generic function.
//! struct Zeros(usize);
//!
//! impl OnDevice for Zeros {
//!     type Output = Vec<f32>;
//!     fn run<D: EngineDevice>(self, dev: D) -> Vec<f32> {
//!         use dfdx::prelude::*;
//!         dev.zeros_like(&(self.0,)).as_vec()
//!     }
//! }
//!
//! assert_eq!(DeviceChoice::cpu().dispatch(Zeros(3)), [0.0; 3]);
//! ```

use dfdx::prelude::Cpu;

use super::EngineDevice;

/// An opened compute device (`recipe::build::device` resolves a recipe's
/// `train.device` to one).
pub enum DeviceChoice {
    /// dfdx's CPU device with the project's fast kernels.
    Cpu(Cpu),
    /// dfdx's CUDA device (GPU 0); the project's ops run in their composed form.
    #[cfg(feature = "cuda")]
    Cuda(Box<dfdx::prelude::Cuda>),
}

/// Why [`DeviceChoice::cuda`] gave no GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoCuda {
    /// This binary was built without the `cuda` feature.
    NotBuilt,
    /// The driver or the GPU did not open (the reason, for the user).
    Failed(String),
}

/// Work to run on whichever device was chosen: a function generic over the device,
/// written as a type because Rust closures cannot be generic. The fields are its
/// arguments; [`DeviceChoice::dispatch`] calls [`run`](OnDevice::run).
pub trait OnDevice {
    /// What the work returns.
    type Output;
    /// The work, on device `dev`.
    fn run<D: EngineDevice>(self, dev: D) -> Self::Output;
}

impl DeviceChoice {
    /// The CPU.
    pub fn cpu() -> Self {
        DeviceChoice::Cpu(Cpu::default())
    }

    /// GPU 0, with dfdx's random stream seeded from `seed`. Without the `cuda`
    /// feature, [`NoCuda::NotBuilt`]; a driver or GPU that does not open is
    /// [`NoCuda::Failed`], never a panic.
    pub fn cuda(seed: u64) -> Result<Self, NoCuda> {
        #[cfg(feature = "cuda")]
        {
            open_cuda(seed)
                .map(|c| DeviceChoice::Cuda(Box::new(c)))
                .map_err(NoCuda::Failed)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = seed;
            Err(NoCuda::NotBuilt)
        }
    }

    /// `cpu` or `cuda`, as results.json records it.
    pub fn name(&self) -> &'static str {
        match self {
            DeviceChoice::Cpu(_) => "cpu",
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(_) => "cuda",
        }
    }

    /// Runs `job` on this device: the one place a device is matched.
    pub fn dispatch<J: OnDevice>(self, job: J) -> J::Output {
        match self {
            DeviceChoice::Cpu(dev) => job.run(dev),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(dev) => job.run(*dev),
        }
    }
}

/// GPU 0, with dfdx's random stream seeded from the recipe.
#[cfg(feature = "cuda")]
fn open_cuda(seed: u64) -> Result<dfdx::prelude::Cuda, String> {
    use cudarc::driver::sys::{CUresult, cuDeviceGetCount, cuInit};
    use dfdx::tensor::CudaError;
    // cudarc's `CudaDevice::new` unwraps `cuInit` and `cuDeviceGet`: ask first, so a
    // machine without a working driver or GPU gets an error instead of a panic.
    // SAFETY: plain driver calls with a valid out-pointer.
    let count = unsafe {
        let r = cuInit(0);
        if r != CUresult::CUDA_SUCCESS {
            return Err(format!("the CUDA driver did not start (cuInit: {r:?})"));
        }
        let mut n: std::ffi::c_int = 0;
        let r = cuDeviceGetCount(&mut n);
        if r != CUresult::CUDA_SUCCESS {
            return Err(format!("cannot count CUDA devices ({r:?})"));
        }
        n
    };
    if count < 1 {
        return Err("the CUDA driver sees no GPU".into());
    }
    // Not `{e:?}`: cudarc's Debug asks the driver for the error's text and panics
    // when the driver cannot answer (a link-only or broken libcuda). The codes are enough.
    dfdx::prelude::Cuda::try_build(0, seed).map_err(|e| match e {
        CudaError::Driver(d) => format!("the CUDA driver answered {:?}", d.0),
        CudaError::Blas(b) => format!("cuBLAS answered {:?}", b.0),
        CudaError::Cpu(c) => format!("{c:?}"),
    })
}

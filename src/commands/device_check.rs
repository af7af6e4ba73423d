//! `recipe device-check`: op parity of a device against the CPU kernels.

use std::process::ExitCode;

use clap::ValueEnum;
use recipe::build;
use recipe::device_check::{OpParity, op_parity};
use recipe::nn::EngineDevice;
use recipe::nn::device::OnDevice;
use recipe::spec::train::Device;

/// The device to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckedDevice {
    /// The composed forms on the CPU against the fast CPU kernels.
    Cpu,
    /// The composed forms on GPU 0 (a binary built with `--features cuda`).
    Cuda,
}

/// The largest relative error accepted (issue: 1e-4 on random inputs).
const TOLERANCE: f64 = 1e-4;

pub fn device_check(which: CheckedDevice) -> ExitCode {
    let want = match which {
        CheckedDevice::Cpu => Device::Cpu,
        CheckedDevice::Cuda => Device::Cuda,
    };
    let device = match build::device(want, 0) {
        Ok((e, _)) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    print(&device.dispatch(Parity))
}

/// [`op_parity`] on the device checked.
struct Parity;

impl OnDevice for Parity {
    type Output = Vec<OpParity>;
    fn run<D: EngineDevice>(self, dev: D) -> Vec<OpParity> {
        op_parity(&dev)
    }
}

fn print(rows: &[OpParity]) -> ExitCode {
    println!("{:<72} {:>10} {:>10}", "op", "forward", "gradient");
    let mut bad = 0;
    for r in rows {
        let ok = r.forward <= TOLERANCE && r.gradient <= TOLERANCE;
        bad += usize::from(!ok);
        println!(
            "{:<72} {:>10.2e} {:>10.2e}{}",
            r.op,
            r.forward,
            r.gradient,
            if ok { "" } else { "  FAIL" }
        );
    }
    if bad > 0 {
        eprintln!(
            "error: {bad} op(s) differ from the CPU kernels by more than {TOLERANCE:e} (relative)"
        );
        ExitCode::from(1)
    } else {
        println!(
            "all {} ops within {TOLERANCE:e} of the CPU kernels",
            rows.len()
        );
        ExitCode::SUCCESS
    }
}

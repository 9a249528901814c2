//! What the GPU path decides, checked without a GPU (issue #35): passes go one at a time on a
//! GPU-kind device, and side by side on the CPU.

use std::sync::Arc;

use classifyd::engine::device::DeviceKind;
use classifyd::engine::tokenize::Input;
use classifyd::engine::{DTypeChoice, DeviceChoice, Engine};

use crate::helpers::*;

/// Two threads (the fast and the bulk lane) run 15 passes each on one engine. Gated as on a
/// GPU, every pass goes through the gate and never two at once; on the CPU none does.
#[test]
fn passes_go_one_at_a_time_on_a_gpu_kind_device() {
    let load = || Engine::load(&fixture("bert"), DeviceChoice::Cpu, DTypeChoice::Auto).unwrap();
    let mut gpu = load();
    gpu.gate_passes_as_on(DeviceKind::Gpu);
    for (engine, want) in [(Arc::new(gpu), Some(30)), (Arc::new(load()), None)] {
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let engine = engine.clone();
                std::thread::spawn(move || {
                    let text = format!("lane {t}: ").repeat(40);
                    let row = engine.tokenize(&Input::Text(text), true).unwrap();
                    for _ in 0..15 {
                        assert_eq!(engine.logits_padded(&[&row, &row]).unwrap().len(), 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (taken, most_inside) = engine.pass_gate_counts();
        match want {
            Some(passes) => assert_eq!((taken, most_inside), (passes, 1)),
            None => assert_eq!((taken, most_inside), (0, 0)),
        }
    }
}

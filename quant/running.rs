//! Read-modify-write of running state (observer ranges, BatchNorm statistics) that the replicas
//! of a model share.
//!
//! Burn's multi-device training clones the model for every device; the clones share each
//! [`RunningState`] (one value behind an `Arc`), and every replica's forward runs on its own
//! thread. Burn's `RunningState::update` keeps one pending value per thread and averages them
//! at the next sync, which is right for nothing an observer keeps (the running range of two
//! batches is the min of the mins and the max of the maxes, not their mean) and loses updates
//! when two replicas read the same old value. Every update of burn-quant's running state
//! therefore reads, computes and stores under one process-wide lock ([`exclusive`]) and
//! stores with [`commit`], so that each replica's batch is merged into the state the previous
//! one left: running min/max then end each step at the range of the union of the devices'
//! batches, whatever their order.
//!
//! Once running state has been used from more than one thread, [`read`] goes through host
//! memory: Burn 0.22.1's fusion (wgpu) can reuse the buffer of a tensor that another thread's
//! stream produced while it is still read, which lost updates and mixed states in
//! `tests/observer.rs` (threads sharing one observer). A program that trains on one thread
//! never pays for it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, ThreadId};

use burn::module::RunningState;
use burn::tensor::{Device, Tensor, TensorData};

/// Serializes every read-modify-write of shared running state. It guards no data of its own.
static STATE_LOCK: Mutex<()> = Mutex::new(());

/// Set once running state has been used from a second thread.
static SHARED_ACROSS_THREADS: AtomicBool = AtomicBool::new(false);

/// The thread that used running state last, until a second one does.
static LAST_THREAD: Mutex<Option<ThreadId>> = Mutex::new(None);

/// Records the current thread; whether running state is (or was) used from several threads.
fn shared_across_threads() -> bool {
    if SHARED_ACROSS_THREADS.load(Ordering::Acquire) {
        return true;
    }
    let mut last = LAST_THREAD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let current = thread::current().id();
    match *last {
        Some(thread) if thread != current => {
            SHARED_ACROSS_THREADS.store(true, Ordering::Release);
            true
        }
        _ => {
            *last = Some(current);
            false
        }
    }
}

/// Runs `update` while no other thread updates running state.
pub(crate) fn exclusive<R>(update: impl FnOnce() -> R) -> R {
    // A panic in another update leaves no broken invariant behind this lock: go on.
    let _guard = STATE_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    update()
}

/// The committed value of `state`, on `device` (the replica's: the shared value lives on the
/// device of whichever replica stored it last).
pub(crate) fn read<const D: usize>(state: &RunningState<Tensor<D>>, device: &Device) -> Tensor<D> {
    match shared_across_threads() {
        // A fresh tensor of this thread's (see the module's notes).
        true => Tensor::from_data(host_value(state), device),
        false => state.value_sync().to_device(device),
    }
}

/// The committed value of `state` in host memory.
///
/// Reading a tensor by value lets go of it before the read reaches the device's server; another
/// replica's `fork` (which swaps the shared tensor for its own thread's view on every training
/// step) could then free the buffer before it is read: Burn 0.22.1's fusion answers "Should have
/// handle for tensor". A clone kept alive until the data is back keeps the buffer in place.
pub(crate) fn host_value<const D: usize>(state: &RunningState<Tensor<D>>) -> TensorData {
    let value = state.value_sync();
    let data = value.clone().into_data();
    drop(value);
    data
}

/// Stores a new value so that it is visible at once, also to `save_file` and `into_record`
/// (which read the committed value, not the per-thread pending one). Call it inside
/// [`exclusive`] when the new value depends on the old one.
pub(crate) fn commit<const D: usize>(state: &RunningState<Tensor<D>>, value: Tensor<D>) {
    let _ = shared_across_threads();
    state.update(value);
    let _ = state.value_sync();
}

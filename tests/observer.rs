//! Observers: running and EMA ranges, freezing, bad input, and saving with the model.

mod common;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use burn_quant::{MinMaxObserverConfig, QScheme, QuantError, set_observing};
use common::{device, to_vec};

fn range(obs: &burn_quant::MinMaxObserver) -> (Vec<f32>, Vec<f32>) {
    let (min, max) = obs.range();
    (to_vec(min), to_vec(max))
}

#[test]
fn running_min_max_only_grows() {
    let device = device();
    let obs = MinMaxObserverConfig::new(QScheme::affine(8).unwrap()).init(&device);
    obs.update(&Tensor::<1>::from_floats([-1.0, 2.0], &device));
    obs.update(&Tensor::<1>::from_floats([-0.5, 0.5], &device));
    assert_eq!(range(&obs), (vec![-1.0], vec![2.0]));
    obs.update(&Tensor::<1>::from_floats([3.0], &device));
    assert_eq!(range(&obs), (vec![-1.0], vec![3.0]));
}

#[test]
fn ema_min_max_moves_both_ways() {
    let device = device();
    let obs = MinMaxObserverConfig::new(QScheme::affine(8).unwrap())
        .with_ema_momentum(0.5)
        .init(&device);
    obs.update(&Tensor::<1>::from_floats([-2.0, 4.0], &device));
    assert_eq!(range(&obs), (vec![-2.0], vec![4.0]));
    obs.update(&Tensor::<1>::from_floats([0.0, 2.0], &device));
    assert_eq!(range(&obs), (vec![-1.0], vec![3.0]));
}

#[test]
fn per_channel_ranges() {
    let device = device();
    let obs = MinMaxObserverConfig::new(QScheme::affine(8).unwrap().per_channel(1))
        .with_channels(2)
        .init(&device);
    obs.update(&Tensor::<2>::from_floats(
        [[1.0, -3.0], [-2.0, 5.0], [0.5, 0.0]],
        &device,
    ));
    assert_eq!(range(&obs), (vec![-2.0, -3.0], vec![1.0, 5.0]));
    assert_eq!(obs.qparams().scale.dims(), [2]);
}

#[test]
fn frozen_observer_keeps_its_range() {
    let device = device();
    let obs = MinMaxObserverConfig::new(QScheme::affine(4).unwrap()).init(&device);
    let _ = obs.fake_quant(Tensor::<1>::from_floats([-1.0, 1.0], &device));
    let obs = obs.frozen(true);
    let y = obs.fake_quant(Tensor::<1>::from_floats([-10.0, 10.0], &device));
    assert_eq!(range(&obs), (vec![-1.0], vec![1.0]));
    // Values outside the frozen range are clipped to the ends of its grid.
    let (scale, zp) = obs.qparams().to_host();
    let ends = vec![
        (0 - zp[0]) as f32 * scale[0],
        (15 - zp[0]) as f32 * scale[0],
    ];
    assert_eq!(to_vec(y), ends);
    // `valid()` also stops observing; `set_observing` switches it back on.
    let obs = set_observing(obs, true);
    assert!(obs.is_observing());
    assert!(!obs.valid().is_observing());
}

#[test]
fn nan_and_inf_are_ignored() {
    let device = device();
    let obs = MinMaxObserverConfig::new(QScheme::affine(8).unwrap()).init(&device);
    obs.update(&Tensor::<1>::from_floats(
        [f32::NAN, -1.5, f32::INFINITY, 2.5, f32::NEG_INFINITY],
        &device,
    ));
    assert_eq!(range(&obs), (vec![-1.5], vec![2.5]));
    let (scale, _) = obs.qparams().to_host();
    assert!(scale[0].is_finite() && scale[0] > 0.0);
    // A batch of only NaNs leaves an empty range with the documented unit scale.
    let obs = MinMaxObserverConfig::new(QScheme::affine(8).unwrap()).init(&device);
    obs.update(&Tensor::<1>::from_floats([f32::NAN, f32::NAN], &device));
    assert_eq!(obs.qparams().to_host(), (vec![1.0], vec![255]));
}

#[test]
fn empty_tensors_are_ignored_and_uncalibrated_is_an_error() {
    let device = device();
    let obs = MinMaxObserverConfig::new(QScheme::affine(8).unwrap()).init(&device);
    obs.update(&Tensor::<2>::zeros([0, 3], &device));
    assert!(matches!(
        obs.checked_qparams(),
        Err(QuantError::NotCalibrated)
    ));
    obs.update(&Tensor::<1>::from_floats([0.5], &device));
    assert!(obs.checked_qparams().is_ok());
}

#[test]
fn state_is_saved_with_the_module() {
    let device = device();
    let config = MinMaxObserverConfig::new(QScheme::affine(8).unwrap());
    let obs = config.init(&device);
    obs.update(&Tensor::<1>::from_floats([-0.123, 4.567], &device));
    let dir = std::env::temp_dir().join(format!("burn-quant-obs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("observer.bpk");
    obs.clone().save_file(&path).unwrap();
    let loaded = config.init(&device).load_file(&path);
    assert_eq!(range(&loaded), range(&obs));
    assert_eq!(to_vec(loaded.updates.value()), vec![1.0]);
    std::fs::remove_dir_all(&dir).ok();
}

/// On an autodiff device (as during QAT), per channel and per tensor, with rows longer than one
/// parallel task of the CPU backends' fused pass: the range is the extremes with NaN and ±∞
/// counted as 0.
#[test]
fn long_rows_with_non_finite_values_on_autodiff() {
    let device = device().autodiff();
    let n = 100_000;
    let mut values: Vec<f32> = (0..2 * n)
        .map(|i| 1.0 + ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    values[5] = f32::NAN;
    values[70_001] = 25.0;
    values[n + 3] = -4.0;
    values[n + 90_000] = f32::INFINITY;
    let x = Tensor::<2>::from_data(TensorData::new(values, [2, n]), &device);
    let per_channel = MinMaxObserverConfig::new(QScheme::affine(8).unwrap().per_channel(0))
        .with_channels(2)
        .init(&device);
    per_channel.update(&x);
    let top = 1.0 + 999.0f32 / 100.0;
    assert_eq!(range(&per_channel), (vec![0.0, -4.0], vec![25.0, top]));
    let per_tensor = MinMaxObserverConfig::new(QScheme::affine(8).unwrap()).init(&device);
    per_tensor.update(&x);
    assert_eq!(range(&per_tensor), (vec![-4.0], vec![25.0]));
}

/// Burn's multi-device training forks the model onto each device on that device's thread, which
/// replaces the tensor behind the shared state while the other replicas read it: no read may
/// find that tensor freed under it.
#[test]
fn replicas_read_the_shared_range_while_others_fork_it() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 400;
    let device = device();
    let observer = MinMaxObserverConfig::new(QScheme::affine(8).unwrap()).init(&device);
    observer.update(&Tensor::<1>::from_floats([-1.0, 2.0], &device));
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let (observer, device) = (observer.clone(), device.clone());
            scope.spawn(move || {
                for _ in 0..ROUNDS {
                    let replica = observer.clone().fork(&device);
                    assert_eq!(range(&replica), (vec![-1.0], vec![2.0]));
                    let _ = to_vec(replica.qparams().scale);
                }
            });
        }
    });
    assert_eq!(range(&observer), (vec![-1.0], vec![2.0]));
}

/// Replicas of a model (clones, as Burn's multi-device strategy makes them, one thread each)
/// share the observer state: every replica's batch must be merged, none lost or averaged.
#[test]
fn replicas_on_threads_merge_every_batch_into_the_shared_range() {
    const THREADS: usize = 4;
    const BATCHES: usize = 25;
    let device = device();
    for ema in [None, Some(0.25)] {
        let config = MinMaxObserverConfig::new(QScheme::affine(8).unwrap());
        let config = match ema {
            Some(m) => config.with_ema_momentum(m),
            None => config,
        };
        let observer = config.init(&device);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let replica = observer.clone();
                let device = device.clone();
                scope.spawn(move || {
                    for b in 0..BATCHES {
                        // A range every batch of every replica contributes to: [-v, v].
                        let v = (t * BATCHES + b + 1) as f32;
                        replica.update(&Tensor::<1>::from_floats([-v, 0.5 * v, v], &device));
                    }
                });
            }
        });
        let updates = to_vec(observer.updates.value())[0];
        assert_eq!(
            updates,
            (THREADS * BATCHES) as f32,
            "ema {ema:?}: lost updates"
        );
        let (min, max) = range(&observer);
        if ema.is_none() {
            let top = (THREADS * BATCHES) as f32;
            assert_eq!((min, max), (vec![-top], vec![top]), "the union's range");
        } else {
            // Every EMA range is a convex combination of batch ranges, so it is symmetric.
            assert_eq!(
                min[0], -max[0],
                "ema: updates interleaved inside one another"
            );
        }
    }
}

//! Criterion benches of the advantage and statistics kernels on padded float32 batches
//! (lengths uniform in [T/4, T]), plus a memcpy of the same bytes for scale.
//!
//! `cargo bench -p rlhf-core --bench kernels [-- <filter>]`. Sizes: 256×1024 and
//! 1024×2048 (`RLHF_BENCH_FULL=1` adds 4096×1024). Threads follow `RAYON_NUM_THREADS`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rlhf_core::kernels::gae::{gae, GaeOptions, Masked};
use rlhf_core::kernels::group::{
    group_advantages, Baseline, GroupOptions, Groups, Scale, Singleton,
};
use rlhf_core::kernels::kl::{kl, shaped_rewards, Estimator};
use rlhf_core::kernels::returns::discounted_returns;
use rlhf_core::kernels::stats::{masked_mean, masked_whiten, Axis, WhitenOptions};
use rlhf_core::kernels::tokens::{broadcast_to_tokens, reduce_tokens, Reduce};
use rlhf_core::Layout;

/// A small deterministic generator (xorshift), so the bench needs no extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

struct Batch {
    b: usize,
    t: usize,
    r: Vec<f32>,
    v: Vec<f32>,
    mask: Vec<bool>,
    scores: Vec<f32>,
}

fn batch(b: usize, t: usize) -> Batch {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let n = b * t;
    let r: Vec<f32> = (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let v: Vec<f32> = (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let mut mask = vec![false; n];
    for i in 0..b {
        let len = t / 4 + (rng.next() as usize) % (t - t / 4 + 1);
        mask[i * t..i * t + len].fill(true);
    }
    let scores = (0..b).map(|_| rng.uniform()).collect();
    Batch {
        b,
        t,
        r,
        v,
        mask,
        scores,
    }
}

fn sizes() -> Vec<(usize, usize)> {
    let mut s = vec![(256, 1024), (1024, 2048)];
    if std::env::var_os("RLHF_BENCH_FULL").is_some() {
        s.push((4096, 1024));
    }
    s
}

fn kernels(c: &mut Criterion) {
    for (b, t) in sizes() {
        let x = batch(b, t);
        let n = b * t;
        let l = Layout::padded(x.b, x.t);
        let m = Some(&x.mask[..]);
        let mut out = vec![0f32; n];
        let mut out2 = vec![0f32; n];
        let id = format!("{b}x{t}");
        let mut g = c.benchmark_group("kernels");
        g.throughput(Throughput::Elements(n as u64));

        g.bench_function(BenchmarkId::new("memcpy_8B_per_token", &id), |bn| {
            bn.iter(|| {
                out.copy_from_slice(black_box(&x.r));
                out2.copy_from_slice(black_box(&x.v));
            })
        });
        let opts = GaeOptions {
            gamma: 1.0,
            lam: 0.95,
            masked: Masked::Skip,
        };
        g.bench_function(BenchmarkId::new("gae", &id), |bn| {
            bn.iter(|| gae(&l, &x.r, &x.v, m, None, opts, &mut out, &mut out2).unwrap())
        });
        g.bench_function(BenchmarkId::new("discounted_returns", &id), |bn| {
            bn.iter(|| discounted_returns(&l, &x.r, m, 0.99, Masked::Skip, &mut out).unwrap())
        });
        for est in [Estimator::K1, Estimator::K3] {
            g.bench_function(BenchmarkId::new(format!("kl_{est:?}"), &id), |bn| {
                bn.iter(|| kl(&x.r, &x.v, est, Some(10.0), &mut out).unwrap())
            });
        }
        g.bench_function(BenchmarkId::new("shaped_rewards_k1", &id), |bn| {
            bn.iter(|| {
                shaped_rewards(
                    &l,
                    &x.scores,
                    &x.r,
                    &x.v,
                    m,
                    0.05,
                    Estimator::K1,
                    None,
                    &mut out,
                )
                .unwrap()
            })
        });
        let wo = WhitenOptions::new(Axis::All, true, 1, 1e-8).unwrap();
        g.bench_function(BenchmarkId::new("masked_whiten", &id), |bn| {
            bn.iter(|| masked_whiten(&l, &x.r, m, wo, &mut out).unwrap())
        });
        let mut one = [0f32];
        g.bench_function(BenchmarkId::new("masked_mean", &id), |bn| {
            bn.iter(|| masked_mean(&l, &x.r, m, Axis::All, &mut one).unwrap())
        });
        let mut per_row = vec![0f32; b];
        g.bench_function(BenchmarkId::new("reduce_tokens_mean", &id), |bn| {
            bn.iter(|| reduce_tokens(&l, &x.r, m, Reduce::Mean, &mut per_row).unwrap())
        });
        let go = GroupOptions::new(Baseline::Mean, Scale::Group, 1, 1e-6, Singleton::Zero).unwrap();
        g.bench_function(
            BenchmarkId::new("group_advantages_then_broadcast_g8", &id),
            |bn| {
                bn.iter(|| {
                    group_advantages(&x.scores, Groups::Size(8), &go, &mut per_row).unwrap();
                    broadcast_to_tokens(&l, &per_row, m, &mut out).unwrap()
                })
            },
        );
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = kernels
}
criterion_main!(benches);

//! The parts of the station benchmark: the floor (the same round trip
//! without the station), the station's replicas as processes driven by the
//! MES of `microdcs::testkit`, and the statistics.

pub(crate) mod counters;
pub(crate) mod floor;
pub(crate) mod mes;
pub(crate) mod replicas;
pub(crate) mod spy;
pub(crate) mod station;
pub(crate) mod stats;
pub(crate) mod validation;

/// What the benchmark failed at, in words for the terminal.
pub(crate) type BenchResult<T> = Result<T, String>;

/// A received message and when its client's event loop saw it.
pub(crate) type Received = (std::time::Instant, rumqttc::v5::mqttbytes::v5::Publish);

/// Sizes of one run: `--quick` or the full run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Floor round trips one at a time.
    pub(crate) floor_sequential: usize,
    /// Floor round trips with [`Sizes::in_flight`] outstanding.
    pub(crate) floor_loaded: usize,
    /// Jobs run before measuring (not counted).
    pub(crate) warmup_jobs: usize,
    /// Jobs one at a time (step latency without queueing).
    pub(crate) sequential_jobs: usize,
    /// Jobs with [`Sizes::in_flight`] outstanding (throughput).
    pub(crate) loaded_jobs: usize,
    /// Requests or jobs kept outstanding in the loaded phases.
    pub(crate) in_flight: usize,
    /// Jobs stored in the scope when the first loaded batch starts (the
    /// warm-up and sequential jobs, then `Store` orders).
    pub(crate) stored_small: usize,
    /// Jobs stored in the scope when the second loaded batch starts
    /// (1 replica only).
    pub(crate) stored_large: usize,
    /// `Store` orders kept outstanding while filling the scope.
    pub(crate) fill_in_flight: usize,
}

impl Sizes {
    /// `--quick`: a smoke run of well under a minute.
    pub(crate) const QUICK: Sizes = Sizes {
        floor_sequential: 500,
        floor_loaded: 5_000,
        warmup_jobs: 20,
        sequential_jobs: 50,
        loaded_jobs: 200,
        in_flight: 100,
        stored_small: 1_000,
        stored_large: 5_000,
        fill_in_flight: 500,
    };

    /// The full run.
    pub(crate) const FULL: Sizes = Sizes {
        floor_sequential: 2_000,
        floor_loaded: 20_000,
        warmup_jobs: 100,
        sequential_jobs: 200,
        loaded_jobs: 1_000,
        in_flight: 100,
        stored_small: 1_000,
        stored_large: 20_000,
        fill_in_flight: 500,
    };
}

//! The per-instance sampler suite, shared by `samplers_gaussian.rs` and `samplers_logconcave.rs`:
//! `sampler_suite!(bench_fn, "label", ald = .., daps = .., dps = ..)` expands to every sampler's
//! floor check and its broken-variant companion on the instance `bench_fn` builds; the three
//! numbers are the regression bounds of the biased baselines (each invoking file says where its
//! bounds come from).

#[allow(unused_macros)]
macro_rules! sampler_suite {
    ($bench_fn:path, $label:literal, ald = $ald:expr, daps = $daps:expr, dps = $dps:expr) => {
        static BENCH: OnceLock<Bench> = OnceLock::new();
        fn bench() -> &'static Bench {
            shared(&BENCH, $bench_fn)
        }

        /// Floor-level tolerance for sliced W2: 1.3 x the mean exact-vs-exact floor (the hard
        /// requirement; floor_sd/floor_mean is about 6% on the d = 30 Gaussian instance and 9% on the
        /// d = 10 log-concave one, so 1.3x is ~5 resp. ~3.3 floor_sd above the floor).
        fn sw2_tol(f: &MetricFloors) -> f64 {
            1.3 * f.sw2.floor_mean
        }

        /// Floor-level tolerance for the moment errors: floor_mean + 4 floor_sd (an exact sampler exceeds
        /// it with probability well below 1e-3 under a normal approximation of the floor's spread).
        fn moments_ok(m: &Metrics, f: &MetricFloors) -> bool {
            m.mean_err <= floor_plus(&f.mean_err, 4.0) && m.cov_err <= floor_plus(&f.cov_err, 4.0)
        }

        // ---------------------------------------------------------------------------------------------
        // Algorithm 1.

        #[test]
        fn annealed_default_reaches_floor() {
            let b = bench();
            let m = timed("annealed", || run::annealed_default(b, &b.prior, b.eta));
            report(concat!($label, " annealed"), &m, &b.floors);
            // Hard requirement: sliced W2 <= 1.3 x floor_mean.
            assert!(
                m.sw2 <= sw2_tol(&b.floors),
                "sw2 {}",
                ratio(m.sw2, &b.floors.sw2)
            );
            // Moments within floor_mean + 4 floor_sd.
            assert!(moments_ok(&m, &b.floors), "{m:?}");
        }

        /// Companion: the prior score scaled by 1.5 (a mis-scaled network) breaks the check.
        #[test]
        fn annealed_check_fails_with_scaled_score() {
            let b = bench();
            let broken = BrokenScore {
                inner: &b.prior,
                scale: 1.5,
                shift: 0.0,
            };
            let m = run::annealed_default(b, &broken, b.eta);
            report(concat!($label, " annealed score*1.5"), &m, &b.floors);
            assert!(
                m.sw2 > sw2_tol(&b.floors),
                "sw2 {}",
                ratio(m.sw2, &b.floors.sw2)
            );
        }

        // ---------------------------------------------------------------------------------------------
        // ULA and MALA (asymptotically exact with enough steps; settings in `common::run`).

        #[test]
        fn ula_reaches_floor() {
            let b = bench();
            let m = timed("ula", || run::ula(b, &b.prior, b.eta));
            report(concat!($label, " ula"), &m, &b.floors);
            // Same floor-level tolerances as Algorithm 1 (5000 steps at h_rel = 0.5, see run::ula_cfg).
            assert!(
                m.sw2 <= sw2_tol(&b.floors),
                "sw2 {}",
                ratio(m.sw2, &b.floors.sw2)
            );
            assert!(moments_ok(&m, &b.floors), "{m:?}");
        }

        /// Companion: ULA with the prior score scaled by 1.5.
        #[test]
        fn ula_check_fails_with_scaled_score() {
            let b = bench();
            let broken = BrokenScore {
                inner: &b.prior,
                scale: 1.5,
                shift: 0.0,
            };
            let m = run::ula(b, &broken, b.eta);
            report(concat!($label, " ula score*1.5"), &m, &b.floors);
            assert!(
                m.sw2 > sw2_tol(&b.floors),
                "sw2 {}",
                ratio(m.sw2, &b.floors.sw2)
            );
        }

        #[test]
        fn mala_reaches_floor() {
            let b = bench();
            let (m, acc) = timed("mala", || run::mala(b, &b.prior, b.eta));
            report(
                &format!(concat!($label, " mala (acceptance {:.3})"), acc),
                &m,
                &b.floors,
            );
            assert!(
                m.sw2 <= sw2_tol(&b.floors),
                "sw2 {}",
                ratio(m.sw2, &b.floors.sw2)
            );
            assert!(moments_ok(&m, &b.floors), "{m:?}");
        }

        /// Companion: MALA targeting the posterior of a wrong prior (covariance / 1.5, i.e. the score
        /// scaled by 1.5) fails the same check.
        #[test]
        fn mala_check_fails_with_wrong_log_density() {
            let b = bench();
            let wrong = run::scaled_cov_prior(&b.prior, 1.0 / 1.5);
            let (m, _) = run::mala(b, &wrong, b.eta);
            report(concat!($label, " mala prior cov/1.5"), &m, &b.floors);
            assert!(
                m.sw2 > sw2_tol(&b.floors),
                "sw2 {}",
                ratio(m.sw2, &b.floors.sw2)
            );
        }

        // ---------------------------------------------------------------------------------------------
        // Biased baselines: regression bounds on the sliced-W2 ratio to the floor.
        //
        // These methods do not sample p(x|y) exactly even with exact scores, so the bound is a
        // regression bound: about 15-20% above the ratio measured with these seeds at the time of writing
        // (stated per method; with other seeds ALD and DAPS were measured at 1.58x and 1.47x, so the
        // seed-to-seed spread of the ratio is ~0.15), so that a change making a baseline worse (or a broken
        // ingredient) is caught, while an improvement passes.

        const ALD_SW2_RATIO: f64 = $ald;
        const DAPS_SW2_RATIO: f64 = $daps;
        const DPS_SW2_RATIO: f64 = $dps;

        #[test]
        fn ald_regression_bound() {
            let b = bench();
            let m = timed("ald", || run::ald(b, &b.prior, b.eta));
            report(concat!($label, " ald"), &m, &b.floors);
            let r = ratio(m.sw2, &b.floors.sw2);
            assert!(r <= ALD_SW2_RATIO, "ALD sw2 ratio {r}");
        }

        /// Companion: ALD with the score scaled by 1.5.
        #[test]
        fn ald_check_fails_with_scaled_score() {
            let b = bench();
            let broken = BrokenScore {
                inner: &b.prior,
                scale: 1.5,
                shift: 0.0,
            };
            let m = run::ald(b, &broken, b.eta);
            report(concat!($label, " ald score*1.5"), &m, &b.floors);
            let r = ratio(m.sw2, &b.floors.sw2);
            assert!(r > ALD_SW2_RATIO, "ALD broken sw2 ratio {r}");
        }

        #[test]
        fn daps_regression_bound() {
            let b = bench();
            let m = timed("daps", || run::daps(b, &b.prior, b.eta));
            report(concat!($label, " daps"), &m, &b.floors);
            let r = ratio(m.sw2, &b.floors.sw2);
            assert!(r <= DAPS_SW2_RATIO, "DAPS sw2 ratio {r}");
        }

        /// Companion: DAPS told the wrong noise level (1.5 eta).
        #[test]
        fn daps_check_fails_with_wrong_eta() {
            let b = bench();
            let m = run::daps(b, &b.prior, 1.5 * b.eta);
            report(concat!($label, " daps eta*1.5"), &m, &b.floors);
            let r = ratio(m.sw2, &b.floors.sw2);
            assert!(r > DAPS_SW2_RATIO, "DAPS broken sw2 ratio {r}");
        }

        #[test]
        fn dps_regression_bound() {
            let b = bench();
            let m = timed("dps", || run::dps(b, 1.0));
            report(concat!($label, " dps"), &m, &b.floors);
            let r = ratio(m.sw2, &b.floors.sw2);
            assert!(r <= DPS_SW2_RATIO, "DPS sw2 ratio {r}");
        }

        /// Companion: DPS without guidance (zeta = 0) samples the prior.
        #[test]
        fn dps_check_fails_without_guidance() {
            let b = bench();
            let m = run::dps(b, 0.0);
            report(concat!($label, " dps zeta=0"), &m, &b.floors);
            let r = ratio(m.sw2, &b.floors.sw2);
            assert!(r > DPS_SW2_RATIO, "DPS zeta=0 sw2 ratio {r}");
        }

        // ---------------------------------------------------------------------------------------------
        // Exact sampling.

        /// An exact sample is a draw of the floor distribution itself, so the bound is
        /// floor_mean + 4 floor_sd for every metric (sliced W2 included).
        #[test]
        fn exact_is_at_floor() {
            let b = bench();
            let m = run::exact(b, &b.post);
            report(concat!($label, " exact"), &m, &b.floors);
            assert!(
                m.sw2 <= floor_plus(&b.floors.sw2, 4.0),
                "sw2 {}",
                ratio(m.sw2, &b.floors.sw2)
            );
            assert!(moments_ok(&m, &b.floors), "{m:?}");
        }

        /// Companion: the exact posterior for a wrong noise level (2 eta) fails the same check.
        #[test]
        fn exact_check_fails_with_wrong_eta() {
            let b = bench();
            let wrong = b
                .prior
                .posterior(&b.op, b.y_vec.as_slice(), 2.0 * b.eta)
                .unwrap();
            let m = run::exact(b, &wrong);
            report(concat!($label, " exact eta*2"), &m, &b.floors);
            assert!(
                m.sw2 > floor_plus(&b.floors.sw2, 4.0),
                "sw2 {}",
                ratio(m.sw2, &b.floors.sw2)
            );
        }
    };
}

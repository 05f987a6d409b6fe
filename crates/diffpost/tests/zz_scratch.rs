mod common;
use common::*;
use diffpost::rng::SampleStreams;
use diffpost::sampler::ula::Init;
use diffpost::sampler::StepRule;
use diffpost::sampler::*;

fn run_all(b: &Bench) {
    let f = &b.floors;
    println!("== {} floors {:?}", b.name, f);
    println!("post weights {:?}", b.post.weights());
    let p = b.problem(&b.prior, b.eta);
    let n = N;
    let m = timed("annealed", || {
        b.eval(
            &annealed::sample(
                &p,
                Some(&b.prior),
                &annealed::AnnealedConfig::default(),
                &mut SampleStreams::range(1, n),
                &Silent,
            )
            .unwrap(),
        )
    });
    report("annealed", &m, f);
    for (h, steps) in [(0.2, 6000usize), (0.2, 10000), (0.5, 5000)] {
        let cfg = ula::UlaConfig {
            steps,
            step: StepRule::Relative { h_rel: h },
            init: Init::ExactPrior,
            l_prior: None,
        };
        let m = timed("ula", || {
            b.eval(
                &ula::sample(
                    &p,
                    Some(&b.prior),
                    &cfg,
                    &mut SampleStreams::range(2, n),
                    &Silent,
                )
                .unwrap(),
            )
        });
        report(&format!("ula h{h} s{steps}"), &m, f);
    }
    for (h, steps) in [(0.5, 4000usize), (0.5, 6000), (1.0, 4000)] {
        let cfg = mala::MalaConfig {
            steps,
            step: StepRule::Relative { h_rel: h },
            init: Init::ExactPrior,
            l_prior: None,
        };
        let o = timed("mala", || {
            mala::sample(
                &p,
                &b.prior,
                Some(&b.prior),
                &cfg,
                &mut SampleStreams::range(3, n),
                &Silent,
            )
            .unwrap()
        });
        let m = b.eval(&o);
        report(
            &format!("mala h{h} s{steps} acc {:?}", o.info.acceptance),
            &m,
            f,
        );
    }
    let m = timed("ald", || {
        b.eval(
            &ald::sample(
                &p,
                &ald::AldConfig::default(),
                &mut SampleStreams::range(4, n),
                &Silent,
            )
            .unwrap(),
        )
    });
    report("ald", &m, f);
    let m = timed("daps", || {
        b.eval(
            &daps::sample(
                &p,
                &daps::DapsConfig::default(),
                &mut SampleStreams::range(5, n),
                &Silent,
            )
            .unwrap(),
        )
    });
    report("daps", &m, f);
    let m = timed("dps", || {
        b.eval(
            &dps::sample(
                &p,
                &dps::DpsConfig::default(),
                &mut SampleStreams::range(6, n),
                &Silent,
            )
            .unwrap(),
        )
    });
    report("dps", &m, f);
    let m = b.eval(&exact::sample(&b.post, &mut SampleStreams::range(7, n)).unwrap());
    report("exact", &m, f);
    // broken
    let br = BrokenScore {
        inner: &b.prior,
        scale: 1.5,
        shift: 0.0,
    };
    let pb = b.problem(&br, b.eta);
    let m = timed("annealed broken", || {
        b.eval(
            &annealed::sample(
                &pb,
                Some(&b.prior),
                &annealed::AnnealedConfig::default(),
                &mut SampleStreams::range(1, n),
                &Silent,
            )
            .unwrap(),
        )
    });
    report("annealed score*1.5", &m, f);
    let m = timed("ald broken", || {
        b.eval(
            &ald::sample(
                &pb,
                &ald::AldConfig::default(),
                &mut SampleStreams::range(4, n),
                &Silent,
            )
            .unwrap(),
        )
    });
    report("ald score*1.5", &m, f);
    let pe = b.problem(&b.prior, 1.5 * b.eta);
    let m = b.eval(
        &daps::sample(
            &pe,
            &daps::DapsConfig::default(),
            &mut SampleStreams::range(5, n),
            &Silent,
        )
        .unwrap(),
    );
    report("daps eta*1.5", &m, f);
    let m = b.eval(
        &dps::sample(
            &p,
            &dps::DpsConfig {
                zeta: 0.0,
                ..Default::default()
            },
            &mut SampleStreams::range(6, n),
            &Silent,
        )
        .unwrap(),
    );
    report("dps zeta0", &m, f);
    let cfg = mala::MalaConfig {
        steps: 4000,
        step: StepRule::Relative { h_rel: 0.5 },
        init: Init::ExactPrior,
        l_prior: None,
    };
    let m = b.eval(
        &mala::sample(
            &pe,
            &b.prior,
            Some(&b.prior),
            &cfg,
            &mut SampleStreams::range(3, n),
            &Silent,
        )
        .unwrap(),
    );
    report("mala eta*1.5", &m, f);
    let pe = b.problem(&b.prior, 1.2 * b.eta);
    let m = b.eval(
        &mala::sample(
            &pe,
            &b.prior,
            Some(&b.prior),
            &cfg,
            &mut SampleStreams::range(3, n),
            &Silent,
        )
        .unwrap(),
    );
    report("mala eta*1.2", &m, f);
}

#[test]
fn scratch_gauss() {
    run_all(&gaussian_bench());
}
#[test]
fn scratch_lc() {
    run_all(&logconcave_bench());
}

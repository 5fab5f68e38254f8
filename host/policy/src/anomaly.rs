//! Per-identity anomaly rules: the shapes model-extraction attacks take, noticed from the
//! queries themselves.
//!
//! A budget and a rate limit bound how much an identity may ask; they cannot tell a lender
//! scoring its applicants from a harvester mapping the model. The publisher's `policy watch`
//! rules ([`Rule`]) look at how an identity asks: sweeps of one input, probes of the ranges'
//! edges, near-duplicate queries (finite differences) and sudden bursts.
//!
//! A [`Watcher`] keeps, per (identity, program), the last [`WINDOW`] queries' visible inputs and
//! what the rate rule needs, for at most [`MAX_TRACKED`] keys. Pure: time is passed in as
//! milliseconds, and nothing is persisted (a restart forgets the history, which costs an
//! attacker a fresh window and a rate warm-up, no more).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};

use quorumvm_core::circuit::{
    Action, MIN_BURST, Rule, TOLERANCE_PERCENT, ValueDecl, WARMUP_MS, WINDOW, Watch,
};

/// The most (identity, program) keys a watcher remembers; beyond it the least recently seen is
/// forgotten, so an attacker rotating identities costs memory only up to this bound.
pub const MAX_TRACKED: usize = 10_000;
/// A rule fires at most once per key in this period: a campaign is one event to act on, not
/// one per query.
pub const FIRING_COOLDOWN_MS: u64 = 10 * 60 * 1000;
/// How long a [`Action::Throttle`] firing holds for its key.
pub const THROTTLE_MS: u64 = 10 * 60 * 1000;

/// A rule that fired on a query, with what the host is asked to do and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    pub rule: Rule,
    pub action: Action,
    /// Human-readable evidence for the audit log and the operator, e.g. "input `income` swept
    /// upward over 12 queries while the other 9 stayed fixed".
    pub evidence: String,
}

type Key = (String, String);

/// The recent history of every watched (identity, program).
#[derive(Debug, Default)]
pub struct Watcher {
    keys: HashMap<Key, History>,
    /// Keys by when they were last seen, first the one to evict. A counter rather than the
    /// clock, which may repeat or step back.
    recency: BTreeMap<u64, Key>,
    ticks: u64,
}

impl Watcher {
    pub fn new() -> Watcher {
        Watcher::default()
    }

    /// Records one admitted-or-not query of `identity` on `program` and returns the rules that
    /// fire on it (each rule fires at most once per [`FIRING_COOLDOWN_MS`] per key, so a campaign
    /// yields one firing, not one per query).
    ///
    /// `values` are the visible inputs' raw values in the manifest's order and `decls` their
    /// declarations (`manifest.inputs`): names for the evidence, ranges for the tolerances. A
    /// program without rules is not tracked at all. Costs O([`WINDOW`] × inputs).
    pub fn observe(
        &mut self,
        identity: &str,
        program: &str,
        watch: &[Watch],
        values: &[i128],
        decls: &[ValueDecl],
        now_ms: u64,
    ) -> Vec<Firing> {
        if watch.is_empty() {
            return Vec::new();
        }
        let key = (identity.to_owned(), program.to_owned());
        if !self.keys.contains_key(&key)
            && self.keys.len() >= MAX_TRACKED
            && let Some((_, oldest)) = self.recency.pop_first()
        {
            self.keys.remove(&oldest);
        }
        self.ticks += 1;
        let history = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| History::new(now_ms));
        self.recency.remove(&history.tick);
        history.tick = self.ticks;
        self.recency.insert(self.ticks, key);

        history.record(values, decls, now_ms);
        let mut firings = Vec::new();
        for &w in watch {
            if history.cooling(w, now_ms) {
                continue;
            }
            if let Some(evidence) = history.evidence(w.rule, decls, now_ms) {
                history.fire(w, now_ms);
                firings.push(Firing {
                    rule: w.rule,
                    action: w.action,
                    evidence,
                });
            }
        }
        firings
    }

    /// Whether a Throttle firing holds for this key now ([`THROTTLE_MS`] after it fired).
    pub fn throttled(&self, identity: &str, program: &str, now_ms: u64) -> bool {
        let key = (identity.to_owned(), program.to_owned());
        self.keys
            .get(&key)
            .is_some_and(|h| now_ms < h.throttled_until)
    }
}

/// One query as the window rules need it.
#[derive(Debug)]
struct Query {
    values: Vec<i128>,
    /// How many of its values lie at an edge of their range (inputs with an interior only).
    edges: usize,
    /// Whether it repeats an earlier query of the window it arrived in, to within the
    /// tolerance on every input. Decided on arrival, so that a query costs O(WINDOW × inputs)
    /// and never a rescan of the whole window.
    near: bool,
}

#[derive(Debug)]
struct History {
    /// When the key was last seen, in [`Watcher::ticks`].
    tick: u64,
    window: VecDeque<Query>,
    first_ms: u64,
    total: u64,
    minute: Minute,
    /// When each rule last fired here; as many entries as the policy has rules.
    fired: Vec<(Watch, u64)>,
    throttled_until: u64,
}

impl History {
    fn new(now_ms: u64) -> History {
        History {
            tick: 0,
            window: VecDeque::with_capacity(WINDOW),
            first_ms: now_ms,
            total: 0,
            minute: Minute::new(now_ms),
            fired: Vec::new(),
            throttled_until: 0,
        }
    }

    fn record(&mut self, values: &[i128], decls: &[ValueDecl], now_ms: u64) {
        // Queries of another shape (a caller's mistake) are not comparable with the window's.
        if self
            .window
            .front()
            .is_some_and(|q| q.values.len() != values.len())
        {
            self.window.clear();
        }
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        let edges = values
            .iter()
            .zip(decls)
            .filter(|&(&v, d)| has_interior(d) && at_edge(v, d))
            .count();
        let near = !values.is_empty()
            && self.window.iter().any(|q| {
                q.values
                    .iter()
                    .zip(values)
                    .zip(decls)
                    .all(|((&a, &b), d)| a.abs_diff(b) <= tolerance(d).unsigned_abs())
            });
        self.window.push_back(Query {
            values: values.to_vec(),
            edges,
            near,
        });
        self.total += 1;
        self.minute.add(now_ms);
    }

    fn cooling(&self, w: Watch, now_ms: u64) -> bool {
        self.fired
            .iter()
            .find(|(f, _)| *f == w)
            .is_some_and(|&(_, at)| now_ms.saturating_sub(at) < FIRING_COOLDOWN_MS)
    }

    fn fire(&mut self, w: Watch, now_ms: u64) {
        match self.fired.iter_mut().find(|(f, _)| *f == w) {
            Some(last) => last.1 = now_ms,
            None => self.fired.push((w, now_ms)),
        }
        if w.action == Action::Throttle {
            self.throttled_until = now_ms.saturating_add(THROTTLE_MS);
        }
    }

    /// Why `rule` holds for the latest query, or `None` if it does not.
    fn evidence(&self, rule: Rule, decls: &[ValueDecl], now_ms: u64) -> Option<String> {
        // The rules were checked with the manifest, so a percentage is at most 100 and a sweep
        // at most WINDOW long.
        let percent_of = |part: usize, whole: usize, percent: u32| {
            whole > 0 && part * 100 >= percent as usize * whole
        };
        match rule {
            Rule::Rate { factor } => self.burst(factor, now_ms),
            Rule::Edges { percent } => {
                let interior = decls.iter().filter(|d| has_interior(d)).count();
                let counted = interior * WINDOW;
                let at_edge: usize = self.window.iter().map(|q| q.edges).sum();
                (self.window.len() == WINDOW && percent_of(at_edge, counted, percent)).then(|| {
                    format!(
                        "{at_edge} of the {counted} values of the last {WINDOW} queries' \
                         {interior} ranged inputs lie at an edge of their range ({}%)",
                        at_edge * 100 / counted
                    )
                })
            }
            Rule::NearDuplicates { percent } => {
                let near = self.window.iter().filter(|q| q.near).count();
                (self.window.len() == WINDOW && percent_of(near, WINDOW, percent)).then(|| {
                    format!(
                        "{near} of the last {WINDOW} queries repeat an earlier one to within \
                         {TOLERANCE_PERCENT}% of every input's range"
                    )
                })
            }
            Rule::Sweep { length } => self.sweep(length as usize, decls),
        }
    }

    fn burst(&self, factor: u32, now_ms: u64) -> Option<String> {
        let history_ms = now_ms.saturating_sub(self.first_ms);
        let last = self.minute.count();
        // last ≥ factor × (total per minute of history), in integers.
        let burst = u128::from(last) * u128::from(history_ms)
            >= u128::from(factor) * u128::from(self.total) * u128::from(MINUTE_MS);
        (history_ms >= WARMUP_MS && last >= MIN_BURST && burst).then(|| {
            let minutes = history_ms / MINUTE_MS;
            let average = self.total as f64 * MINUTE_MS as f64 / history_ms as f64;
            format!(
                "{last} queries in the last minute, at least {factor}x its average of \
                 {average:.1} per minute over {minutes} minutes"
            )
        })
    }

    /// Whether the last `length` queries move one input strictly monotonically and hold the
    /// others exactly.
    fn sweep(&self, length: usize, decls: &[ValueDecl]) -> Option<String> {
        let start = self.window.len().checked_sub(length)?;
        let recent = self.window.range(start..);
        let mut swept: Option<(usize, Ordering)> = None;
        for (before, after) in recent.clone().zip(recent.skip(1)) {
            let mut changed = before
                .values
                .iter()
                .zip(&after.values)
                .enumerate()
                .filter(|(_, (a, b))| a != b);
            let (input, (a, b)) = changed.next()?;
            if changed.next().is_some() {
                return None;
            }
            let step = (input, b.cmp(a));
            if *swept.get_or_insert(step) != step {
                return None;
            }
        }
        let (input, direction) = swept?;
        let name = decls.get(input).map_or("?", |d| d.name.as_str());
        let way = if direction == Ordering::Greater {
            "upward"
        } else {
            "downward"
        };
        let others = match self
            .window
            .back()
            .map_or(0, |q| q.values.len().saturating_sub(1))
        {
            0 => String::new(),
            n => format!(" while the other {n} stayed fixed"),
        };
        Some(format!(
            "input `{name}` swept {way} over {length} queries{others}"
        ))
    }
}

const MINUTE_MS: u64 = 60_000;

/// Queries over the last minute, in one-second slots: constant memory whatever the burst.
#[derive(Debug)]
struct Minute {
    slots: [u32; 60],
    latest_s: u64,
}

impl Minute {
    fn new(now_ms: u64) -> Minute {
        Minute {
            slots: [0; 60],
            latest_s: now_ms / 1000,
        }
    }

    /// A clock that steps back counts in the latest second, never re-opens an old one.
    fn add(&mut self, now_ms: u64) {
        let now_s = now_ms / 1000;
        // Clear the seconds skipped since the latest: 60 at most, which is every slot.
        for s in (self.latest_s + 1..=now_s).take(self.slots.len()) {
            self.slots[(s % 60) as usize] = 0;
        }
        self.latest_s = self.latest_s.max(now_s);
        let slot = &mut self.slots[(self.latest_s % 60) as usize];
        *slot = slot.saturating_add(1);
    }

    fn count(&self) -> u32 {
        self.slots.iter().fold(0, |n, &s| n.saturating_add(s))
    }
}

/// "Near" and "at an edge": [`TOLERANCE_PERCENT`] of the range's width (rounded down, which at
/// 1% loses nothing; divided first, so no range can overflow).
fn tolerance(d: &ValueDecl) -> i128 {
    (d.max - d.min) / 100 * TOLERANCE_PERCENT
}

fn at_edge(v: i128, d: &ValueDecl) -> bool {
    let tol = tolerance(d);
    v.saturating_sub(d.min) <= tol || d.max.saturating_sub(v) <= tol
}

/// Whether some value of the range is at no edge. A 0/1 flag is always at one, so counting it
/// would only dilute what the edges rule measures.
fn has_interior(d: &ValueDecl) -> bool {
    d.max - d.min > 2 * tolerance(d) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumvm_core::circuit::Manifest;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const SECOND: u64 = 1000;
    const MINUTE: u64 = 60 * SECOND;

    /// The credit score as published: its inputs, and its `policy watch` lines plus `rate 5x`.
    fn credit_score() -> (Manifest, Vec<Watch>) {
        let src = include_str!("../../../packages/credit_score.qvm");
        let manifest = quorumvm_compiler::compile(src, "credit_score")
            .unwrap()
            .manifest;
        let mut watch = manifest.policy.watch.clone();
        assert_eq!(watch.len(), 3, "credit_score.qvm's rules: {watch:?}");
        watch.push(Watch {
            rule: Rule::Rate { factor: 5 },
            action: Action::Freeze,
        });
        (manifest, watch)
    }

    /// A plausible applicant, drawn independently per query: clustered where real data is
    /// (most have no late payments, many little savings, homeowner is a flag).
    fn applicant(rng: &mut StdRng) -> Vec<i128> {
        let income = if rng.gen_bool(0.9) {
            rng.gen_range(2_000_000..=15_000_000)
        } else {
            rng.gen_range(0..=25_000_000)
        };
        let age = rng.gen_range(21..=80);
        let years_employed = rng.gen_range(0..=(age - 18).min(40));
        let late_payments = if rng.gen_bool(0.6) {
            0
        } else {
            rng.gen_range(1..=5)
        };
        let savings = if rng.gen_bool(0.2) {
            0
        } else {
            rng.gen_range(0..=5_000_000)
        };
        vec![
            income,
            age,
            years_employed,
            rng.gen_range(5..=80), // debt_ratio, in hundredths
            rng.gen_range(1..=20), // credit_lines
            late_payments,
            rng.gen_range(0..=100), // utilization, in hundredths
            rng.gen_range(0..=8),   // inquiries
            savings,
            rng.gen_range(0..=1), // homeowner
        ]
    }

    /// Runs `queries` (time, values) for one identity and returns every firing, with the index
    /// of the query it fired on.
    fn run(w: &mut Watcher, identity: &str, queries: Campaign) -> Vec<(usize, Firing)> {
        let (m, watch) = credit_score();
        let mut out = Vec::new();
        for (i, (t, values)) in queries.into_iter().enumerate() {
            for f in w.observe(identity, "credit_score@1", &watch, &values, &m.inputs, t) {
                out.push((i, f));
            }
        }
        out
    }

    fn of(firings: &[(usize, Firing)], rule: Kind) -> Vec<(usize, Firing)> {
        firings
            .iter()
            .filter(|(_, f)| rule(&f.rule))
            .cloned()
            .collect()
    }

    /// Timed queries of one identity.
    type Campaign = Vec<(u64, Vec<i128>)>;
    /// Picks the firings of one kind of rule.
    type Kind = fn(&Rule) -> bool;

    /// `income` stepped up from its minimum every 5 s, the other nine held at one applicant.
    fn sweep_campaign(n: usize, start_ms: u64) -> Campaign {
        let base = applicant(&mut StdRng::seed_from_u64(1));
        (0..n)
            .map(|i| {
                let mut v = base.clone();
                v[0] = i as i128 * 100_000;
                (start_ms + i as u64 * 5 * SECOND, v)
            })
            .collect()
    }

    /// Every input at its minimum or maximum, every 5 s.
    fn edge_campaign(n: usize) -> Campaign {
        let (m, _) = credit_score();
        let mut rng = StdRng::seed_from_u64(2);
        (0..n)
            .map(|i| {
                let v = m
                    .inputs
                    .iter()
                    .map(|d| if rng.gen_bool(0.5) { d.min } else { d.max });
                (i as u64 * 5 * SECOND, v.collect())
            })
            .collect()
    }

    /// One applicant, then perturbations of it by one unit (finite differences) of a random
    /// input, every 5 s.
    fn near_campaign(n: usize) -> Campaign {
        let mut rng = StdRng::seed_from_u64(3);
        let base = applicant(&mut rng);
        (0..n)
            .map(|i| {
                let mut v = base.clone();
                if i > 0 {
                    // An input whose range is wide enough for a step of 1 to be within 1%.
                    let k = [0, 3, 6, 8][rng.gen_range(0..4)];
                    v[k] += if rng.gen_bool(0.5) { 1 } else { -1 };
                }
                (i as u64 * 5 * SECOND, v)
            })
            .collect()
    }

    /// One query a minute for 61 minutes, then a query every 2 s.
    fn burst_campaign(burst: usize) -> Campaign {
        let mut rng = StdRng::seed_from_u64(4);
        let steady = (0..=61).map(|i| i * MINUTE);
        let fast = (1..=burst as u64).map(|i| 61 * MINUTE + i * 2 * SECOND);
        steady
            .chain(fast)
            .map(|t| (t, applicant(&mut rng)))
            .collect()
    }

    #[test]
    fn a_sweep_fires_within_its_length() {
        let firings = run(&mut Watcher::new(), "mallory", sweep_campaign(40, 0));
        let sweeps = of(&firings, |r| matches!(r, Rule::Sweep { .. }));
        assert_eq!(sweeps.len(), 1, "{firings:?}");
        let (at, f) = &sweeps[0];
        assert_eq!(*at, 11, "the 12th query completes a sweep of 12");
        assert_eq!(f.action, Action::Freeze);
        assert_eq!(
            f.evidence,
            "input `income` swept upward over 12 queries while the other 9 stayed fixed"
        );
    }

    #[test]
    fn a_sweep_of_a_one_input_program_is_its_values_alone() {
        let x = ValueDecl {
            name: "x".into(),
            scale: 0,
            min: -100,
            max: 100,
        };
        let watch = [Watch {
            rule: Rule::Sweep { length: 4 },
            action: Action::Audit,
        }];
        let mut w = Watcher::new();
        let mut fired = Vec::new();
        for (i, v) in [5, 9, 3, 1, 0, -4].into_iter().enumerate() {
            let f = w.observe("m", "p", &watch, &[v], std::slice::from_ref(&x), i as u64);
            fired.extend(f.into_iter().map(|f| (i, f.evidence)));
        }
        // 9, 3, 1, 0 is the first run of four strictly monotone values.
        assert_eq!(
            fired,
            [(4, "input `x` swept downward over 4 queries".to_string())]
        );
    }

    #[test]
    fn edge_probing_fires_once_the_window_is_full() {
        let firings = run(&mut Watcher::new(), "mallory", edge_campaign(40));
        let edges = of(&firings, |r| matches!(r, Rule::Edges { .. }));
        assert_eq!(edges.len(), 1, "{firings:?}");
        assert_eq!(edges[0].0, WINDOW - 1);
        assert_eq!(edges[0].1.action, Action::Throttle);
        assert!(edges[0].1.evidence.contains("(100%)"), "{:?}", edges[0].1);
    }

    #[test]
    fn near_duplicates_fire_once_the_window_is_full() {
        let firings = run(&mut Watcher::new(), "mallory", near_campaign(40));
        let near = of(&firings, |r| matches!(r, Rule::NearDuplicates { .. }));
        assert_eq!(near.len(), 1, "{firings:?}");
        assert_eq!(near[0].0, WINDOW - 1);
        assert_eq!(near[0].1.action, Action::Audit);
        assert!(
            near[0].1.evidence.starts_with("31 of the last 32"),
            "{near:?}"
        );
    }

    #[test]
    fn a_burst_after_an_hour_of_habit_fires() {
        let firings = run(&mut Watcher::new(), "mallory", burst_campaign(30));
        let rate = of(&firings, |r| matches!(r, Rule::Rate { .. }));
        assert_eq!(rate.len(), 1, "{firings:?}");
        // MIN_BURST queries in the minute: the last steady one and nine of the burst.
        assert_eq!(rate[0].0, 62 + 8, "{rate:?}");
        assert_eq!(rate[0].1.action, Action::Freeze);
        assert!(rate[0].1.evidence.starts_with("10 queries"), "{rate:?}");
    }

    /// A new identity has no habit to depart from: only the rate limit holds it.
    #[test]
    fn a_burst_without_history_does_not_fire() {
        let no_history = (0..200).map(|i| (i * 2 * SECOND, vec![i as i128]));
        let half_hour = (0..30)
            .map(|i| i * MINUTE)
            .chain((1..=30).map(|i| 30 * MINUTE + i * SECOND))
            .map(|t| (t, vec![t as i128 % 7]));
        let x = [ValueDecl {
            name: "x".into(),
            scale: 0,
            min: -1_000_000,
            max: 1_000_000,
        }];
        let watch = [Watch {
            rule: Rule::Rate { factor: 2 },
            action: Action::Freeze,
        }];
        let mut w = Watcher::new();
        for (identity, queries) in [
            ("new", no_history.collect::<Vec<_>>()),
            ("young", half_hour.collect()),
        ] {
            for (t, v) in queries {
                assert_eq!(
                    w.observe(identity, "p", &watch, &v, &x, t),
                    [],
                    "{identity}"
                );
            }
        }
    }

    /// A campaign that goes on fires each rule once per cooldown, not once per query.
    #[test]
    fn each_rule_fires_once_per_cooldown() {
        // Each campaign runs 9 minutes past its first firing; every shape persists throughout.
        let campaigns: [(&str, Campaign, Kind); 4] = [
            ("sweep", sweep_campaign(120, 0), |r| {
                matches!(r, Rule::Sweep { .. })
            }),
            ("edges", edge_campaign(140), |r| {
                matches!(r, Rule::Edges { .. })
            }),
            ("near", near_campaign(140), |r| {
                matches!(r, Rule::NearDuplicates { .. })
            }),
            ("rate", burst_campaign(9 * 30), |r| {
                matches!(r, Rule::Rate { .. })
            }),
        ];
        for (name, queries, rule) in campaigns {
            let firings = run(&mut Watcher::new(), name, queries);
            assert_eq!(of(&firings, rule).len(), 1, "{name}: {firings:?}");
        }
        // Past the cooldown, a sweep still going on fires again.
        let firings = run(&mut Watcher::new(), "m", sweep_campaign(250, 0));
        let at: Vec<u64> = of(&firings, |r| matches!(r, Rule::Sweep { .. }))
            .iter()
            .map(|(i, _)| *i as u64 * 5 * SECOND)
            .collect();
        assert_eq!(at, [55 * SECOND, 55 * SECOND + FIRING_COOLDOWN_MS]);
    }

    #[test]
    fn a_throttle_holds_for_its_period() {
        let mut w = Watcher::new();
        let firings = run(&mut w, "mallory", edge_campaign(WINDOW));
        assert_eq!(firings.len(), 1, "{firings:?}");
        let fired = (WINDOW as u64 - 1) * 5 * SECOND;
        assert!(w.throttled("mallory", "credit_score@1", fired));
        assert!(w.throttled("mallory", "credit_score@1", fired + THROTTLE_MS - 1));
        assert!(!w.throttled("mallory", "credit_score@1", fired + THROTTLE_MS));
        assert!(!w.throttled("mallory", "credit_score@2", fired));
        assert!(!w.throttled("alice", "credit_score@1", fired));
        // A freeze or an audit is the host's to act on; it does not throttle here.
        run(&mut w, "sweeper", sweep_campaign(20, 0));
        run(&mut w, "nudger", near_campaign(40));
        assert!(!w.throttled("sweeper", "credit_score@1", 100 * SECOND));
        assert!(!w.throttled("nudger", "credit_score@1", 200 * SECOND));
    }

    /// Ordinary callers: 200 identities × 2,000 independent applicants each, at a steady
    /// rate of their own with jitter, under the credit score's rules and `rate 5x`.
    #[test]
    fn normal_traffic_trips_nothing() {
        let (m, watch) = credit_score();
        let mut w = Watcher::new();
        let mut rng = StdRng::seed_from_u64(2024);
        let (mut queries, mut firings) = (0u64, Vec::new());
        for id in 0..200 {
            let identity = format!("lender-{id}");
            let mean_ms = rng.gen_range(2 * SECOND..=60 * SECOND);
            let mut t = rng.gen_range(0..MINUTE);
            for _ in 0..2000 {
                t += rng.gen_range(mean_ms / 2..=mean_ms * 3 / 2);
                let values = applicant(&mut rng);
                firings.extend(w.observe(
                    &identity,
                    "credit_score@1",
                    &watch,
                    &values,
                    &m.inputs,
                    t,
                ));
                queries += 1;
            }
        }
        println!(
            "normal traffic: {queries} queries of 200 identities observed, {} firings",
            firings.len()
        );
        assert_eq!(firings, []);
    }

    #[test]
    fn the_least_recently_seen_key_is_evicted() {
        let (m, watch) = credit_score();
        let mut w = Watcher::new();
        run(&mut w, "a", edge_campaign(WINDOW));
        run(&mut w, "b", edge_campaign(WINDOW));
        let now = WINDOW as u64 * 5 * SECOND;
        let values = applicant(&mut StdRng::seed_from_u64(5));
        for i in 0..MAX_TRACKED - 2 {
            w.observe(
                &format!("k{i}"),
                "credit_score@1",
                &watch,
                &values,
                &m.inputs,
                now,
            );
        }
        assert_eq!(w.keys.len(), MAX_TRACKED);
        assert!(w.throttled("a", "credit_score@1", now) && w.throttled("b", "credit_score@1", now));
        // Seeing `a` again makes `b` the oldest, which the next new key pushes out.
        w.observe("a", "credit_score@1", &watch, &values, &m.inputs, now);
        w.observe("new", "credit_score@1", &watch, &values, &m.inputs, now);
        assert_eq!((w.keys.len(), w.recency.len()), (MAX_TRACKED, MAX_TRACKED));
        assert!(w.throttled("a", "credit_score@1", now));
        assert!(!w.throttled("b", "credit_score@1", now));
    }

    /// A program without rules costs nothing: its queries are not even kept.
    #[test]
    fn programs_without_rules_are_not_tracked() {
        let (m, _) = credit_score();
        let mut w = Watcher::new();
        for (t, v) in sweep_campaign(40, 0) {
            assert_eq!(w.observe("m", "p", &[], &v, &m.inputs, t), []);
        }
        assert!(w.keys.is_empty());
    }
}

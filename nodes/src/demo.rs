//! Small nodes over numbers, for examples, tests and benchmarks. They are real nodes (registered,
//! cached, drawn) with trivial bodies, so flows made of them measure the engine, not the work.

use std::time::Duration;

use flowrun_engine::{Collect, Parallel, node};

/// The integers `0..n`, fanned out: nodes downstream of `range` run once per integer.
#[node(tags(kind = "demo"))]
pub fn range(n: i64) -> Parallel<i64> {
    (0..n).collect()
}

/// `x * x`.
#[node(tags(kind = "demo"))]
pub fn square(x: i64) -> i64 {
    x * x
}

/// `a + b`.
#[node(tags(kind = "demo"))]
pub fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Returns its input: the cheapest possible node, used by the engine benchmarks.
#[node(tags(kind = "demo"))]
pub fn noop(x: i64) -> i64 {
    x
}

/// Sum of collected values (a fan-in).
#[node(tags(kind = "demo"))]
pub fn sum(values: Collect<i64>) -> i64 {
    values.iter().sum()
}

/// Sleeps `ms` milliseconds, then returns `x` (for testing interruption and parallelism).
#[node(tags(kind = "demo"))]
pub fn sleep_ms(x: i64, ms: i64) -> i64 {
    std::thread::sleep(Duration::from_millis(ms.max(0) as u64));
    x
}

/// Fails with `message` when `x` equals `fail_on`, else returns `x` (for testing failure handling).
#[node(tags(kind = "demo"))]
pub fn fail_on(x: i64, fail_on: i64, message: String) -> anyhow::Result<i64> {
    if x == fail_on {
        anyhow::bail!("{message} (x = {x})");
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_plain_functions() {
        assert_eq!(range(3), Parallel(vec![0, 1, 2]));
        assert_eq!(square(4), 16);
        assert_eq!(add(2, 3), 5);
        assert_eq!(sum(Collect(vec![1, 2, 3])), 6);
        assert_eq!(fail_on(1, 2, "no".into()).unwrap(), 1);
        assert_eq!(fail_on(2, 2, "no".into()).unwrap_err().to_string(), "no (x = 2)");
    }
}

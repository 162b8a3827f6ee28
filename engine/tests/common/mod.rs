//! Nodes more than one test file uses: the numbers 1..=n as a fan-out, and each one's square.

use flowrun_engine::{Parallel, node};

#[node]
fn numbers(n: i64) -> Parallel<i64> {
    (1..=n).collect()
}

#[node]
fn square(numbers: i64) -> i64 {
    numbers * numbers
}

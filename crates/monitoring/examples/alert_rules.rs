//! Prints the Prometheus alerting rules for the built-in thresholds.

fn main() {
    print!(
        "{}",
        tiercache_monitoring::alerts::prometheus_rules(&tiercache_monitoring::alerts::THRESHOLDS)
    );
}

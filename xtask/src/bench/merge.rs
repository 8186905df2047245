//! Merging the JSON reports of several `portcullis-load` processes that shared one run's load (`bench storm`
//! runs two: one process may hold only so many descriptors).
//!
//! Counts add up. A percentile of the union is not a function of the parts' percentiles, but it is never above
//! the largest of them (a value exceeding the q-quantile of every part exceeds it in the union too), so the
//! merged report carries that maximum: an upper bound, the conservative side for latency targets. Means are
//! weighted by count.

use serde_json::{Map, Value, json};

/// The reports of processes that ran the same phases at the same time, merged into one.
pub fn reports(parts: &[Value]) -> Value {
    let Some(first) = parts.first() else {
        return Value::Null;
    };
    json!({
        "elapsed_s": max_f64(parts, |r| &r["elapsed_s"]),
        "rate_ok": sum_f64(parts, |r| &r["rate_ok"]),
        "ok": sum_u64(parts, |r| &r["ok"]),
        "failed": sum_u64(parts, |r| &r["failed"]),
        "phases": first["phases"],
        "phase_stats": zip_arrays(parts, "phase_stats", phase),
        "kinds": merge_objects(parts, |r| &r["kinds"], kind),
        "error_samples": union_objects(parts, |r| &r["error_samples"]),
        "series": zip_arrays(parts, "series", second),
    })
}

fn phase(ps: &[&Value]) -> Value {
    let first = ps.first().copied().unwrap_or(&Value::Null);
    json!({
        "name": first["name"],
        "start_s": first["start_s"],
        "duration_s": first["duration_s"],
        "rate": sum_f64(ps, |p| &p["rate"]),
        "offered": sum_u64(ps, |p| &p["offered"]),
        "ok": sum_u64(ps, |p| &p["ok"]),
        "resumed": sum_u64(ps, |p| &p["resumed"]),
        "failed": sum_u64(ps, |p| &p["failed"]),
        "goodput": sum_f64(ps, |p| &p["goodput"]),
        "handshake_us": percentiles(ps, |p| &p["handshake_us"]),
        "tls_us": percentiles(ps, |p| &p["tls_us"]),
        "flight_us": percentiles(ps, |p| &p["flight_us"]),
        "resumption": {
            "offered": sum_u64(ps, |p| &p["resumption"]["offered"]),
            "resumed": sum_u64(ps, |p| &p["resumption"]["resumed"]),
            "rejected": sum_u64(ps, |p| &p["resumption"]["rejected"]),
        },
    })
}

fn second(ss: &[&Value]) -> Value {
    let first = ss.first().copied().unwrap_or(&Value::Null);
    json!({
        "t": first["t"],
        "offered": sum_u64(ss, |s| &s["offered"]),
        "ok": sum_u64(ss, |s| &s["ok"]),
        "resumed": sum_u64(ss, |s| &s["resumed"]),
        "errors": sum_objects(ss, |s| &s["errors"]),
        "handshake_us": merge_objects(ss, |s| &s["handshake_us"], |ps| percentiles(ps, |p| p)),
        "started": {
            "ok": sum_u64(ss, |s| &s["started"]["ok"]),
            "failed": sum_u64(ss, |s| &s["started"]["failed"]),
            "handshake_us": percentiles(ss, |s| &s["started"]["handshake_us"]),
        },
    })
}

fn kind(ks: &[&Value]) -> Value {
    json!({
        "attempted": sum_u64(ks, |k| &k["attempted"]),
        "ok": sum_u64(ks, |k| &k["ok"]),
        "resumed": sum_u64(ks, |k| &k["resumed"]),
        "full": sum_u64(ks, |k| &k["full"]),
        "fallback": sum_objects(ks, |k| &k["fallback"]),
        "errors": sum_objects(ks, |k| &k["errors"]),
        "connect_us": percentiles(ks, |k| &k["connect_us"]),
        "handshake_us": percentiles(ks, |k| &k["handshake_us"]),
        "first_byte_us": percentiles(ks, |k| &k["first_byte_us"]),
    })
}

/// Percentiles of the union: counts added, quantiles and max the largest of the parts (an upper bound), the
/// mean weighted by count. Parts with no values do not count.
fn percentiles<T>(parts: &[T], get: impl Fn(&T) -> &Value) -> Value {
    let present: Vec<&Value> = parts
        .iter()
        .map(&get)
        .filter(|p| p["count"].as_u64().unwrap_or(0) > 0)
        .collect();
    let count: u64 = present.iter().filter_map(|p| p["count"].as_u64()).sum();
    let max_of = |field: &str| {
        present
            .iter()
            .filter_map(|p| p[field].as_u64())
            .max()
            .unwrap_or(0)
    };
    let weighted: f64 = present
        .iter()
        .map(|p| p["mean"].as_f64().unwrap_or(0.0) * p["count"].as_f64().unwrap_or(0.0))
        .sum();
    json!({
        "count": count,
        "p50": max_of("p50"),
        "p90": max_of("p90"),
        "p99": max_of("p99"),
        "p999": max_of("p999"),
        "max": max_of("max"),
        "mean": if count > 0 { weighted / count as f64 } else { 0.0 },
    })
}

/// Element `i` of every part's `field` array merged by `f`, for every `i` any part has.
fn zip_arrays(parts: &[Value], field: &str, f: impl Fn(&[&Value]) -> Value) -> Value {
    let len = parts
        .iter()
        .filter_map(|r| r[field].as_array().map(Vec::len))
        .max()
        .unwrap_or(0);
    Value::Array(
        (0..len)
            .map(|i| {
                let items: Vec<&Value> = parts
                    .iter()
                    .filter_map(|r| r[field].as_array().and_then(|a| a.get(i)))
                    .collect();
                f(&items)
            })
            .collect(),
    )
}

/// Every key of the parts' objects, its values merged by `f`.
fn merge_objects<T>(
    parts: &[T],
    get: impl Fn(&T) -> &Value,
    f: impl Fn(&[&Value]) -> Value,
) -> Value {
    let mut keys: Vec<&String> = parts
        .iter()
        .filter_map(|p| get(p).as_object())
        .flat_map(Map::keys)
        .collect();
    keys.sort();
    keys.dedup();
    let mut out = Map::new();
    for key in keys {
        let items: Vec<&Value> = parts
            .iter()
            .filter_map(|p| get(p).get(key.as_str()))
            .collect();
        out.insert(key.clone(), f(&items));
    }
    Value::Object(out)
}

/// Objects of counts, added key by key.
fn sum_objects<T>(parts: &[T], get: impl Fn(&T) -> &Value) -> Value {
    merge_objects(parts, get, |vs| {
        json!(vs.iter().filter_map(|v| v.as_u64()).sum::<u64>())
    })
}

/// Objects of strings: the first part's value of each key.
fn union_objects<T>(parts: &[T], get: impl Fn(&T) -> &Value) -> Value {
    merge_objects(parts, get, |vs| {
        vs.first().map_or(Value::Null, |v| (*v).clone())
    })
}

fn sum_u64<T>(parts: &[T], get: impl Fn(&T) -> &Value) -> u64 {
    parts.iter().filter_map(|p| get(p).as_u64()).sum()
}

fn sum_f64<T>(parts: &[T], get: impl Fn(&T) -> &Value) -> f64 {
    parts.iter().filter_map(|p| get(p).as_f64()).sum()
}

fn max_f64<T>(parts: &[T], get: impl Fn(&T) -> &Value) -> f64 {
    parts
        .iter()
        .filter_map(|p| get(p).as_f64())
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(count: u64, p99: u64, mean: f64) -> Value {
        json!({ "count": count, "p50": p99 / 2, "p90": p99, "p99": p99, "p999": p99, "max": p99, "mean": mean })
    }

    #[test]
    fn counts_add_and_percentiles_take_the_upper_bound() {
        let a = json!({
            "ok": 3, "failed": 1, "rate_ok": 1.5, "elapsed_s": 10.0, "phases": [],
            "phase_stats": [{ "name": "storm", "start_s": 0.0, "duration_s": 2.0, "rate": 10.0, "offered": 4,
                "ok": 3, "resumed": 1, "failed": 1, "goodput": 1.5, "handshake_us": pct(3, 900, 100.0),
                "tls_us": pct(3, 800, 100.0), "resumption": { "offered": 1, "resumed": 1, "rejected": 0 } }],
            "series": [{ "t": 0, "offered": 4, "ok": 3, "resumed": 1, "errors": { "timeout": 1 },
                "handshake_us": { "full13": pct(2, 900, 100.0) },
                "started": { "ok": 3, "failed": 1, "handshake_us": pct(3, 900, 100.0) } }],
            "kinds": {}, "error_samples": { "timeout": "a" },
        });
        let b = json!({
            "ok": 1, "failed": 0, "rate_ok": 0.5, "elapsed_s": 11.0, "phases": [],
            "phase_stats": [{ "name": "storm", "start_s": 0.0, "duration_s": 2.0, "rate": 10.0, "offered": 1,
                "ok": 1, "resumed": 0, "failed": 0, "goodput": 0.5, "handshake_us": pct(1, 300, 300.0),
                "tls_us": pct(0, 0, 0.0), "resumption": { "offered": 0, "resumed": 0, "rejected": 0 } }],
            "series": [{ "t": 0, "offered": 1, "ok": 1, "resumed": 0, "errors": { "io_error": 2 },
                "handshake_us": { "resume13": pct(1, 300, 300.0) },
                "started": { "ok": 1, "failed": 0, "handshake_us": pct(1, 300, 300.0) } },
                { "t": 1, "offered": 0, "ok": 0, "resumed": 0, "errors": {}, "handshake_us": {},
                "started": { "ok": 0, "failed": 0, "handshake_us": pct(0, 0, 0.0) } }],
            "kinds": {}, "error_samples": { "io_error": "b" },
        });
        let m = reports(&[a, b]);
        assert_eq!((m["ok"].as_u64(), m["failed"].as_u64()), (Some(4), Some(1)));
        assert_eq!(m["elapsed_s"].as_f64(), Some(11.0));
        let storm = &m["phase_stats"][0];
        assert_eq!(storm["offered"].as_u64(), Some(5));
        assert_eq!(storm["rate"].as_f64(), Some(20.0));
        assert_eq!(storm["handshake_us"]["p99"].as_u64(), Some(900));
        assert_eq!(storm["handshake_us"]["count"].as_u64(), Some(4));
        assert_eq!(storm["handshake_us"]["mean"].as_f64(), Some(150.0));
        // A part with no values does not pull the bound down or count.
        assert_eq!(storm["tls_us"]["count"].as_u64(), Some(3));
        let s0 = &m["series"][0];
        assert_eq!(s0["errors"]["timeout"].as_u64(), Some(1));
        assert_eq!(s0["errors"]["io_error"].as_u64(), Some(2));
        assert_eq!(s0["started"]["failed"].as_u64(), Some(1));
        assert!(
            s0["handshake_us"]["full13"].is_object() && s0["handshake_us"]["resume13"].is_object()
        );
        assert_eq!(m["series"].as_array().map(Vec::len), Some(2));
        assert_eq!(m["error_samples"]["io_error"], "b");
    }
}

//! `bpftool` on the daemon's pins: the second, independent reader of the XDP program's maps, and `prog run` of
//! the pinned program on a packet file.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Runs `bpftool <args> <path>`, which must succeed (panics with its stderr otherwise); returns its stdout.
pub fn bpftool(args: &[&str], path: &Path) -> String {
    let out = Command::new("bpftool")
        .args(args)
        .arg(path)
        .output()
        .expect("run bpftool (install bpftool)");
    assert!(
        out.status.success(),
        "bpftool {args:?} {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `bpftool prog run pinned <program> data_in <frame_file>`, which must succeed; its stdout and stderr (where
/// `Return value: N` is the XDP action).
pub fn prog_run(program: &Path, frame_file: &Path) -> String {
    let out = Command::new("bpftool")
        .args(["prog", "run", "pinned"])
        .arg(program)
        .arg("data_in")
        .arg(frame_file)
        .output()
        .expect("run bpftool (install bpftool)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "bpftool prog run failed: {text}");
    text
}

/// `bpftool map update pinned <map> key hex .. value hex ..`, which must succeed: an entry written as another
/// version of the daemon or an operator's script would, behind the CLI's back.
pub fn map_update(map: &Path, key: &[u8], value: &[u8]) {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>();
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(map)
        .args(["key", "hex"])
        .args(hex(key))
        .args(["value", "hex"])
        .args(hex(value))
        .output()
        .expect("run bpftool (install bpftool)");
    assert!(
        out.status.success(),
        "bpftool map update {} failed: {}",
        map.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The per-CPU array pinned at `path`, summed over CPUs, by key: `bpftool -j map dump pinned <path>`.
pub fn per_cpu_sums(path: &Path) -> BTreeMap<u32, u64> {
    parse_per_cpu_sums(&bpftool(&["-j", "map", "dump", "pinned"], path))
}

/// Sums the per-CPU values of a `bpftool -j map dump` of a per-CPU array, by key. Reads the BTF-formatted part
/// (`"formatted":{"key":K,"values":[{"cpu":C,"value":V},..]}`), which exists because the object carries BTF.
/// Panics on an entry without a key.
pub fn parse_per_cpu_sums(json: &str) -> BTreeMap<u32, u64> {
    let compact: String = json.chars().filter(|c| !c.is_whitespace()).collect();
    let mut sums = BTreeMap::new();
    for entry in compact.split("\"formatted\":").skip(1) {
        let key = number_after(entry, "\"key\":").unwrap_or_else(|| panic!("no key in {entry}"));
        let values = entry.split_once("\"values\":[").map_or("", |(_, v)| v);
        let values = values.split_once(']').map_or(values, |(v, _)| v);
        let total = values
            .split("\"value\":")
            .skip(1)
            .map(|v| number_after(v, "").unwrap_or(0))
            .sum();
        let key = u32::try_from(key).expect("a per-CPU array key fits u32");
        sums.insert(key, total);
    }
    sums
}

/// The value of the one-element `u64` array pinned at `path` (`bpftool -j map dump pinned <path>`).
pub fn single_u64(path: &Path) -> u64 {
    parse_single_u64(&bpftool(&["-j", "map", "dump", "pinned"], path))
}

/// The value of a `bpftool -j map dump` of a one-element array, from its BTF-formatted part
/// (`"formatted":{"key":0,"value":V}`). Panics without one.
pub fn parse_single_u64(json: &str) -> u64 {
    let compact: String = json.chars().filter(|c| !c.is_whitespace()).collect();
    let formatted = compact
        .split_once("\"formatted\":")
        .unwrap_or_else(|| panic!("no formatted entry in {json}"))
        .1;
    number_after(formatted, "\"value\":").unwrap_or_else(|| panic!("no value in {json}"))
}

/// The decimal number right after the first `prefix` in `s`.
fn number_after(s: &str, prefix: &str) -> Option<u64> {
    let rest = &s[s.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_cpus_of_each_key() {
        let json = r#"[{"key":["0x00","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x01"]}],
        "formatted":{"key":0,"values":[{"cpu":0,"value":1},{"cpu":1,"value":2}]}},
        {"formatted":{"key":1,"values":[{"cpu":0,"value":0},{"cpu":1,"value":0}]}},
        {"formatted":{"key":7,"values":[{"cpu":0,"value":4},{"cpu":1,"value":1}]}}]"#;
        let sums = parse_per_cpu_sums(json);
        assert_eq!(sums, BTreeMap::from([(0, 3), (1, 0), (7, 5)]));
    }

    #[test]
    fn reads_the_formatted_value_of_a_single_entry() {
        let json = r#"[{"key":["0x00","0x00","0x00","0x00"],"value":["0x2a","0x00","0x00","0x00","0x00","0x00",
        "0x00","0x00"],"formatted":{"key":0,"value":18446744073709551615}}]"#;
        assert_eq!(parse_single_u64(json), u64::MAX);
    }
}

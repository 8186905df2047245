//! `cargo xtask bench xdp --profile CLASS`: where the JIT'd XDP program spends one class's time.
//!
//! The class runs through `BPF_PROG_TEST_RUN` on one core while `perf record -e cpu-clock -a` samples every CPU;
//! the program's machine code comes from the kernel (`BPF_OBJ_GET_INFO_BY_FD`: the JIT image, the address and
//! length of each function), is disassembled with `objdump`, and every sample that fell inside it is put on its
//! function and instruction. This VM has no hardware counters, so the samples come from a timer: a sample lands on
//! the instruction that was next to retire, which after a long stall (a mispredicted return, a cache miss) is the
//! one *after* the culprit. Read the hot spots with that in mind. x86-64 only (objdump's machine).
//!
//! The program's BTF line info (`lines`) puts each instruction under the source line it came from, so the summary
//! also adds the samples up by source line. LLVM interleaves the code of neighbouring lines, and a line record
//! covers every instruction up to the next record, so a line's total is a guide, not an exact cost.
//!
//! Writes `target/bench/xdp-profile.txt` (the summary, then every instruction with its samples under its source
//! line) and prints the summary.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::{Class, Loaded, bpf, test_run};

mod lines;

/// `BPF_OBJ_GET_INFO_BY_FD`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Bytes of `struct bpf_prog_info` read: up to `jited_line_info_rec_size` (@176), rounded up.
const INFO_LEN: usize = 184;
/// Repeats per `BPF_PROG_TEST_RUN` while sampling: ≈ 0.1 s a call.
const REPEAT: u32 = 1_000_000;
/// Hottest instructions in the printed summary.
const HOTTEST: usize = 25;

/// One function of the JIT image.
struct Function {
    /// Its name from its kernel symbol (`bpf_prog_<tag>_<name>`), or its index.
    name: String,
    /// Kernel address of its first byte.
    start: u64,
    /// Its machine code.
    code: Vec<u8>,
}

/// Profiles `class` for `seconds` (see the module docs).
pub(super) fn run(object: &mut Loaded, class: &Class, out: &Path, seconds: Duration) -> Result<()> {
    if !cfg!(target_arch = "x86_64") {
        bail!("--profile disassembles the JIT image with objdump for x86-64 only");
    }
    for tool in ["perf", "objdump"] {
        if which(tool).is_none() {
            bail!(
                "--profile needs `{tool}` on PATH: run `cargo xtask setup --bench` (Debian packages linux-perf and \
                 binutils)"
            );
        }
    }
    object.prepare(class)?;
    let data = out.join("xdp-profile.perf.data");
    let stop = AtomicBool::new(false);
    let runs = std::thread::scope(|scope| -> Result<u64> {
        // The load starts before perf and stops after it: every sample falls while the class runs. Bounded by
        // time even if perf never returns.
        let load = scope.spawn(|| -> Result<u64> {
            let limit = Instant::now() + seconds + Duration::from_secs(60);
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                // A flood class runs through its driver, which tail-calls the guard (`back_to_back`).
                let fd = if class.back_to_back {
                    object.driver.fd
                } else {
                    object.fd
                };
                test_run(fd, &class.frame, REPEAT)?;
                runs += u64::from(REPEAT);
            }
            Ok(runs)
        });
        let status = Command::new("perf")
            .args([
                "record",
                "--quiet",
                "-e",
                "cpu-clock",
                "-F",
                "10000",
                "-a",
                "-o",
            ])
            .arg(&data)
            .args(["--", "sleep"])
            .arg(seconds.as_secs().to_string())
            .status();
        stop.store(true, Ordering::Relaxed);
        let runs = load
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
        let status = status.context("cannot run `perf record`")?;
        if !status.success() {
            bail!(
                "`perf record` failed ({status}); it needs root (or kernel.perf_event_paranoid <= -1)"
            );
        }
        Ok(runs)
    })?;

    let script = Command::new("perf")
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(&data)
        .output()
        .context("cannot run `perf script`")?;
    if !script.status.success() {
        bail!(
            "`perf script` failed: {}",
            String::from_utf8_lossy(&script.stderr)
        );
    }
    let samples = parse_samples(&String::from_utf8_lossy(&script.stdout));
    // The main program, and the ClientHello program it tail-calls.
    let programs: Vec<_> = std::iter::once(object.fd).chain(object.hello_fd).collect();
    let mut functions = Vec::new();
    for &fd in &programs {
        functions.extend(jit_image(fd)?);
    }
    name_functions(&mut functions)?;
    let lines = lines::Lines::of(&programs)?;
    let report = report(class.name, seconds, runs, &samples, &functions, &lines, out)?;
    let path = out.join("xdp-profile.txt");
    std::fs::write(&path, &report.full)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}", report.summary);
    println!("every instruction with its samples: {}", path.display());
    Ok(())
}

/// The address and symbol of each sample in `perf script -F ip,sym` output; lines that are not one are skipped.
fn parse_samples(script: &str) -> Vec<(u64, String)> {
    script
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let ip = u64::from_str_radix(fields.next()?, 16).ok()?;
            Some((ip, fields.next().unwrap_or("[unknown]").to_string()))
        })
        .collect()
}

/// Names each function after its kernel symbol (`/proc/kallsyms`: `bpf_prog_<tag>_<name>` at its address).
fn name_functions(functions: &mut [Function]) -> Result<()> {
    let kallsyms =
        std::fs::read_to_string("/proc/kallsyms").context("cannot read /proc/kallsyms")?;
    for line in kallsyms.lines() {
        let mut fields = line.split_whitespace();
        let (Some(address), Some(_kind), Some(symbol)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(address) = u64::from_str_radix(address, 16) else {
            continue;
        };
        if let (Some(function), Some(name)) = (
            functions.iter_mut().find(|f| f.start == address),
            program_name(symbol),
        ) {
            function.name = name.to_string();
        }
    }
    Ok(())
}

/// `<name>` of a JIT'd BPF function's symbol, `bpf_prog_<tag>_<name>`.
fn program_name(symbol: &str) -> Option<&str> {
    let rest = symbol.strip_prefix("bpf_prog_")?;
    let (_tag, name) = rest.split_once('_')?;
    Some(name)
}

/// The functions of the loaded program `fd` (its main function, then its subprograms), from the kernel: address,
/// length and machine code of each.
fn jit_image(fd: std::os::fd::RawFd) -> Result<Vec<Function>> {
    // struct bpf_prog_info: jited_prog_len @16, jited_prog_insns @24, nr_jited_ksyms @104, nr_jited_func_lens
    // @108, jited_ksyms @112, jited_func_lens @120.
    let mut info = [0u8; INFO_LEN];
    prog_info(fd, &mut info)?;
    let image_len = u32::from_ne_bytes(info[16..20].try_into()?) as usize;
    let count = u32::from_ne_bytes(info[104..108].try_into()?) as usize;
    if image_len == 0 || count == 0 {
        bail!(
            "the kernel gave no JIT image (is the BPF JIT off? /proc/sys/net/core/bpf_jit_enable)"
        );
    }
    let mut image = vec![0u8; image_len];
    let mut starts = vec![0u64; count];
    let mut lens = vec![0u32; count];
    let mut info = [0u8; INFO_LEN];
    info[16..20].copy_from_slice(&(image_len as u32).to_ne_bytes());
    info[24..32].copy_from_slice(&(image.as_mut_ptr() as u64).to_ne_bytes());
    info[104..108].copy_from_slice(&(count as u32).to_ne_bytes());
    info[108..112].copy_from_slice(&(count as u32).to_ne_bytes());
    info[112..120].copy_from_slice(&(starts.as_mut_ptr() as u64).to_ne_bytes());
    info[120..128].copy_from_slice(&(lens.as_mut_ptr() as u64).to_ne_bytes());
    prog_info(fd, &mut info)?;
    // The image holds the functions one after another, in the order of their addresses and lengths.
    let mut functions = Vec::with_capacity(count);
    let mut at = 0;
    for (index, (&start, &len)) in starts.iter().zip(&lens).enumerate() {
        let len = len as usize;
        let code = image
            .get(at..at + len)
            .context("the kernel's function lengths overrun its JIT image")?
            .to_vec();
        at += len;
        functions.push(Function {
            name: format!("function {index}"),
            start,
            code,
        });
    }
    Ok(functions)
}

/// `BPF_OBJ_GET_INFO_BY_FD` of `fd` into `info` (a `struct bpf_prog_info` prefix, or of another object's info).
fn prog_info(fd: std::os::fd::RawFd, info: &mut [u8; INFO_LEN]) -> Result<()> {
    obj_info(fd, info).context("BPF_OBJ_GET_INFO_BY_FD of the XDP program (needs root)")
}

/// `BPF_OBJ_GET_INFO_BY_FD` of any object `fd` into `info`.
fn obj_info(fd: std::os::fd::RawFd, info: &mut [u8]) -> Result<()> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: `attr` is a bpf_attr for BPF_OBJ_GET_INFO_BY_FD whose pointer (`info`, and the buffers `info` points
    // to, sized as `info` says) outlive the call.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }.context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok(())
}

/// One disassembled instruction: offset in its function, text.
fn disassemble(code: &[u8], scratch: &Path) -> Result<Vec<(u64, String)>> {
    std::fs::write(scratch, code).with_context(|| format!("cannot write {}", scratch.display()))?;
    let output = Command::new("objdump")
        .args(["-D", "-b", "binary", "-m", "i386:x86-64"])
        .arg(scratch)
        .output()
        .context("cannot run objdump")?;
    if !output.status.success() {
        bail!(
            "objdump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(parse_objdump(&String::from_utf8_lossy(&output.stdout)))
}

/// The instructions in objdump's listing (`  offset:\tbytes\tinstruction`); continuation lines of long encodings
/// and headers are skipped.
fn parse_objdump(listing: &str) -> Vec<(u64, String)> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let offset = fields.next()?.trim().strip_suffix(':')?;
            let offset = u64::from_str_radix(offset, 16).ok()?;
            let _bytes = fields.next()?;
            let text = fields.next()?.trim();
            (!text.is_empty()).then(|| (offset, text.to_string()))
        })
        .collect()
}

/// What [`report`] wrote.
struct Report {
    /// Shares by function and the hottest instructions.
    summary: String,
    /// The summary, then every instruction of every function with its samples.
    full: String,
}

/// The summary and the annotated listing.
fn report(
    class: &str,
    seconds: Duration,
    runs: u64,
    samples: &[(u64, String)],
    functions: &[Function],
    lines: &lines::Lines,
    out: &Path,
) -> Result<Report> {
    // Samples per function and per offset in it.
    let mut per_function = vec![std::collections::BTreeMap::<u64, u64>::new(); functions.len()];
    for (ip, _) in samples {
        for (i, function) in functions.iter().enumerate() {
            if let Some(offset) = ip
                .checked_sub(function.start)
                .filter(|&offset| offset < function.code.len() as u64)
            {
                *per_function[i].entry(offset).or_default() += 1;
            }
        }
    }
    let in_program: u64 = per_function.iter().flat_map(|m| m.values()).sum();
    if in_program == 0 {
        bail!(
            "no sample fell inside the XDP program in {} samples: was perf sampling while the class ran?",
            samples.len()
        );
    }
    let share = |n: u64| 100.0 * n as f64 / in_program as f64;
    let mut summary = String::new();
    writeln!(
        summary,
        "XDP profile of {class:?}: {runs} runs in about {} s; {} samples on every CPU, {in_program} inside the \
         program ({:.1}%; the rest is the test-run harness, idle and other work)",
        seconds.as_secs(),
        samples.len(),
        100.0 * in_program as f64 / samples.len().max(1) as f64
    )?;
    writeln!(
        summary,
        "\n{:<32} {:>9} {:>7} {:>7}",
        "function", "samples", "share", "bytes"
    )?;
    for (function, counts) in functions.iter().zip(&per_function) {
        let n: u64 = counts.values().sum();
        writeln!(
            summary,
            "{:<32} {n:>9} {:>6.1}% {:>7}",
            function.name,
            share(n),
            function.code.len()
        )?;
    }
    let mut full = String::new();
    let mut hottest = Vec::new();
    // Samples per source line, in order of first appearance.
    let mut by_line: Vec<(usize, u64)> = Vec::new();
    let scratch = out.join("xdp-profile.jit.bin");
    for (function, counts) in functions.iter().zip(&per_function) {
        let listing = disassemble(&function.code, &scratch)?;
        writeln!(full, "\n{} ({} bytes)", function.name, function.code.len())?;
        let mut current = None;
        for (offset, text) in &listing {
            let line = lines.at(function.start + offset);
            if line != current {
                if let Some(line) = line {
                    writeln!(full, "                       ; {}", lines.text(line))?;
                }
                current = line;
            }
            let n = counts.get(offset).copied().unwrap_or(0);
            writeln!(full, "{n:>8} {:>6.2}%  {offset:>5x}  {text}", share(n))?;
            if n > 0 {
                hottest.push((n, function.name.as_str(), *offset, text.clone()));
                if let Some(line) = line {
                    match by_line.iter_mut().find(|(l, _)| *l == line) {
                        Some((_, total)) => *total += n,
                        None => by_line.push((line, n)),
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_file(&scratch);
    if !by_line.is_empty() {
        by_line.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        writeln!(
            summary,
            "\nhottest source lines (samples of every instruction the line compiled to):"
        )?;
        for (line, n) in by_line.iter().take(HOTTEST) {
            writeln!(summary, "{n:>8} {:>5.1}%  {}", share(*n), lines.text(*line))?;
        }
    }
    hottest.sort_by_key(|hot| std::cmp::Reverse(hot.0));
    writeln!(
        summary,
        "\nhottest instructions (a timer's sample lands on the instruction after a stall):"
    )?;
    for (n, name, offset, text) in hottest.iter().take(HOTTEST) {
        writeln!(
            summary,
            "{n:>8} {:>5.1}%  {name}+{offset:#x}  {text}",
            share(*n)
        )?;
    }
    Ok(Report {
        full: format!("{summary}{full}"),
        summary,
    })
}

/// The path of `tool` on PATH, if any.
fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|path| path.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_objdump, parse_samples, program_name};

    #[test]
    fn samples_are_read_from_perf_script_lines() {
        let script = "    ffffffffc01c2c07 bpf_prog_56c7cb12be7c6a1b_portcullis_hello_parse\n\
                      ffffffff81234567 pv_native_safe_halt\n\
                      garbage\n";
        let samples = parse_samples(script);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].0, 0xffff_ffff_c01c_2c07);
        assert_eq!(program_name(&samples[0].1), Some("portcullis_hello_parse"));
        assert_eq!(program_name(&samples[1].1), None);
    }

    #[test]
    fn instructions_are_read_from_objdump_listings() {
        let listing = "\n/tmp/x.bin:     file format binary\n\nDisassembly of section .data:\n\n\
                       0000000000000000 <.data>:\n\
                       \x20    c07:\t48 8b 7d b8          \tmov    -0x48(%rbp),%rdi\n\
                       \x20   17ff:\t48 bf 00 4e 1f 5e 81 \tmovabs $0xffff88815e1f4e00,%rdi\n\
                       \x20   1806:\t88 ff ff \n";
        assert_eq!(
            parse_objdump(listing),
            vec![
                (0xc07, "mov    -0x48(%rbp),%rdi".to_string()),
                (0x17ff, "movabs $0xffff88815e1f4e00,%rdi".to_string()),
            ]
        );
    }
}

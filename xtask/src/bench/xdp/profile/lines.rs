//! The source line of each JIT'd instruction of a loaded BPF program, from the kernel: the program's line info
//! (`struct bpf_line_info`: the BPF instruction, the file and the line's text as offsets into the program's BTF
//! strings, the line and column), the kernel address where each record's code starts (`jited_line_info`), and the
//! strings from the program's BTF (`BPF_BTF_GET_FD_BY_ID`). What `bpftool prog dump jited linum` prints, without
//! the libbfd Debian's bpftool lacks.

use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};

use anyhow::{Context as _, Result, bail};

use super::super::bpf;
use super::{INFO_LEN, obj_info, prog_info};

/// `BPF_BTF_GET_FD_BY_ID`.
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
/// Bytes of one `struct bpf_line_info`.
const LINE_INFO_LEN: usize = 16;

/// The source lines of some programs' machine code.
pub(super) struct Lines {
    /// Kernel address where each line record's code starts, and the record's index in `texts`; by address.
    starts: Vec<(u64, usize)>,
    /// Each record as `file:line  source text`.
    texts: Vec<String>,
}

impl Lines {
    /// The line info of the loaded programs `fds`; empty for one without (no BTF).
    pub(super) fn of(fds: &[RawFd]) -> Result<Self> {
        let mut lines = Self {
            starts: Vec::new(),
            texts: Vec::new(),
        };
        for &fd in fds {
            let one = Self::of_one(fd)?;
            let base = lines.texts.len();
            lines.starts.extend(
                one.starts
                    .into_iter()
                    .map(|(address, i)| (address, base + i)),
            );
            lines.texts.extend(one.texts);
        }
        lines.starts.sort_unstable();
        Ok(lines)
    }

    /// The line info of the loaded program `fd`; empty when it has none (no BTF).
    fn of_one(fd: RawFd) -> Result<Self> {
        // struct bpf_prog_info: btf_id @128, nr_line_info @148, line_info @152, jited_line_info @160,
        // nr_jited_line_info @168, line_info_rec_size @172, jited_line_info_rec_size @176.
        let mut info = [0u8; INFO_LEN];
        prog_info(fd, &mut info)?;
        let word = |info: &[u8; INFO_LEN], at: usize| {
            u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]])
        };
        let btf_id = word(&info, 128);
        let count = word(&info, 148) as usize;
        if btf_id == 0 || count == 0 || word(&info, 168) as usize != count {
            return Ok(Self {
                starts: Vec::new(),
                texts: Vec::new(),
            });
        }
        if word(&info, 172) as usize != LINE_INFO_LEN || word(&info, 176) != 8 {
            bail!("the kernel's line info records have sizes this reader does not know");
        }
        let mut records = vec![0u8; count * LINE_INFO_LEN];
        let mut addresses = vec![0u64; count];
        let mut info = [0u8; INFO_LEN];
        info[148..152].copy_from_slice(&(count as u32).to_ne_bytes());
        info[152..160].copy_from_slice(&(records.as_mut_ptr() as u64).to_ne_bytes());
        info[160..168].copy_from_slice(&(addresses.as_mut_ptr() as u64).to_ne_bytes());
        info[168..172].copy_from_slice(&(count as u32).to_ne_bytes());
        info[172..176].copy_from_slice(&(LINE_INFO_LEN as u32).to_ne_bytes());
        info[176..180].copy_from_slice(&8u32.to_ne_bytes());
        prog_info(fd, &mut info)?;
        let strings = btf_strings(btf_id)?;
        let string = |offset: u32| -> &str {
            let rest = strings.get(offset as usize..).unwrap_or_default();
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            std::str::from_utf8(&rest[..end]).unwrap_or("?")
        };
        let mut texts = Vec::with_capacity(count);
        for record in records.chunks_exact(LINE_INFO_LEN) {
            let field = |at: usize| {
                u32::from_ne_bytes([record[at], record[at + 1], record[at + 2], record[at + 3]])
            };
            // insn_off @0, file_name_off @4, line_off @8, line_col @12 (line << 10 | column).
            let file = string(field(4));
            let file = file.rsplit('/').next().unwrap_or(file);
            texts.push(format!(
                "{file}:{}  {}",
                field(12) >> 10,
                string(field(8)).trim()
            ));
        }
        let mut starts: Vec<(u64, usize)> = addresses.into_iter().zip(0..).collect();
        starts.sort_unstable();
        Ok(Self { starts, texts })
    }

    /// The record whose code holds `address` (the last one starting at or before it), if any.
    pub(super) fn at(&self, address: u64) -> Option<usize> {
        let after = self.starts.partition_point(|&(start, _)| start <= address);
        after.checked_sub(1).map(|i| self.starts[i].1)
    }

    /// Record `index` as `file:line  source text`.
    pub(super) fn text(&self, index: usize) -> &str {
        &self.texts[index]
    }
}

/// The string section of the BTF object `id`.
fn btf_strings(id: u32) -> Result<Vec<u8>> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: `attr` is a bpf_attr for BPF_BTF_GET_FD_BY_ID (no pointers).
    let fd = unsafe { bpf(BPF_BTF_GET_FD_BY_ID, &mut attr) }.context("BPF_BTF_GET_FD_BY_ID")?;
    // SAFETY: a descriptor the kernel just returned, owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    use std::os::fd::AsRawFd as _;
    // struct bpf_btf_info: btf @0, btf_size @8.
    let mut info = [0u8; 32];
    obj_info(fd.as_raw_fd(), &mut info)?;
    let size = u32::from_ne_bytes(info[8..12].try_into()?) as usize;
    let mut blob = vec![0u8; size];
    let mut info = [0u8; 32];
    info[0..8].copy_from_slice(&(blob.as_mut_ptr() as u64).to_ne_bytes());
    info[8..12].copy_from_slice(&(size as u32).to_ne_bytes());
    obj_info(fd.as_raw_fd(), &mut info)?;
    // struct btf_header: magic u16, version u8, flags u8, hdr_len @4, type_off @8, type_len @12, str_off @16,
    // str_len @20.
    let header = |at: usize| -> Result<usize> {
        Ok(u32::from_ne_bytes(
            blob.get(at..at + 4)
                .context("BTF shorter than its header")?
                .try_into()?,
        ) as usize)
    };
    let start = header(4)? + header(16)?;
    let end = start + header(20)?;
    Ok(blob
        .get(start..end)
        .context("the BTF's string section lies outside it")?
        .to_vec())
}

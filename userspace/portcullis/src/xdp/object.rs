//! The BPF object embedded at build time.
//!
//! `build.rs` points `PORTCULLIS_BPF_OBJECT_EMBEDDED` at the object `cargo xtask build` produced, or at an empty
//! file when the binary was built without the BPF toolchain; the daemon then refuses to start XDP.

use anyhow::{Context as _, bail};

/// The object's bytes, 8-byte aligned as aya's ELF parser wants them; empty when built without it.
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(env!("PORTCULLIS_BPF_OBJECT_EMBEDDED"));

/// The embedded BPF object, or an operator-actionable error when this binary was built without one.
pub(crate) fn embedded() -> anyhow::Result<&'static [u8]> {
    if EMBEDDED.is_empty() {
        bail!(
            "this binary was built without the BPF object, so XDP cannot start; build it with `cargo xtask build` \
             (or remove the [xdp] section from the config to run without XDP)"
        );
    }
    Ok(EMBEDDED)
}

/// The object's map `name` (`map`, as `Ebpf::map`, `map_mut`, `take_map` or `maps_disjoint_mut` found it) as the
/// typed map `T`, which `what` describes for the error. Either failure means this binary and its embedded object
/// disagree, which only a rebuild mends, and the error says so.
pub(crate) fn typed_map<M, T>(map: Option<M>, name: &str, what: &str) -> anyhow::Result<T>
where
    T: TryFrom<M, Error = aya::maps::MapError>,
{
    map.with_context(|| {
        format!("the BPF object has no map `{name}`; rebuild it with `cargo xtask build`")
    })?
    .try_into()
    .with_context(|| format!("map `{name}` is not {what}; rebuild with `cargo xtask build`"))
}

#[cfg(test)]
mod tests {
    use portcullis_abi::names::{ALL_MAPS, ALL_PROGRAMS};

    use super::elf::symbols_in_section;
    use super::*;

    /// The BPF crate cannot use the ABI's name constants (the attributes take literals), so this is where a
    /// renamed map or program is caught: before a deploy fails to find it at start-up.
    #[test]
    fn embedded_object_has_every_abi_name() {
        if EMBEDDED.is_empty() {
            let why = "no BPF object embedded (build with `cargo xtask build` to run this test)";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why}; CI=true forbids skipping"
            );
            eprintln!("SKIP: {why}");
            return;
        }
        let programs = symbols_in_section(EMBEDDED, |section| {
            section == "xdp" || section.starts_with("xdp/") || section.starts_with("sk_reuseport")
        })
        .expect("the embedded object is a valid ELF64 file");
        for name in ALL_PROGRAMS {
            assert!(
                programs.iter().any(|s| s == name),
                "program `{name}` missing from the object: {programs:?}"
            );
        }
        // BTF-defined maps live in `.maps`; legacy ones (aya-log's ring buffer) in `maps`.
        let maps = symbols_in_section(EMBEDDED, |section| section == ".maps" || section == "maps")
            .expect("the embedded object is a valid ELF64 file");
        for name in ALL_MAPS {
            assert!(
                maps.iter().any(|s| s == name),
                "map `{name}` missing from the object: {maps:?}"
            );
        }
    }

    #[test]
    fn embedded_reports_how_to_build_when_empty() {
        if EMBEDDED.is_empty() {
            let message = embedded()
                .expect_err("empty object must be refused")
                .to_string();
            assert!(message.contains("cargo xtask build"), "{message}");
        } else {
            assert!(embedded().is_ok());
        }
    }
}

/// Just enough ELF64 reading to list the symbols of the object's sections, for the name test; kept dependency
/// free rather than pulling an ELF crate into the daemon for a test.
#[cfg(test)]
mod elf {
    /// Names of the symbols defined in sections whose name satisfies `wanted`.
    pub(super) fn symbols_in_section(
        elf: &[u8],
        wanted: impl Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        // ELF64 little endian (`\x7fELF`, class 2, data 1): what bpfel objects are.
        if elf.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let shoff = usize::try_from(u64_at(elf, 0x28)?).ok()?;
        let shentsize = usize::from(u16_at(elf, 0x3a)?);
        let shnum = usize::from(u16_at(elf, 0x3c)?);
        let shstrndx = usize::from(u16_at(elf, 0x3e)?);
        let section = |i: usize| -> Option<Section> {
            let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
            Some(Section {
                name: u32_at(elf, base)?,
                kind: u32_at(elf, base + 4)?,
                offset: usize::try_from(u64_at(elf, base + 0x18)?).ok()?,
                size: usize::try_from(u64_at(elf, base + 0x20)?).ok()?,
                link: usize::try_from(u32_at(elf, base + 0x28)?).ok()?,
            })
        };
        let shstr = section(shstrndx)?;
        let mut names = Vec::new();
        for i in 0..shnum {
            let symtab = section(i)?;
            const SHT_SYMTAB: u32 = 2;
            if symtab.kind != SHT_SYMTAB {
                continue;
            }
            let strtab = section(symtab.link)?;
            // Elf64_Sym: name u32, info u8, other u8, shndx u16, value u64, size u64.
            for sym in elf
                .get(symtab.offset..symtab.offset.checked_add(symtab.size)?)?
                .chunks_exact(24)
            {
                let shndx = usize::from(u16::from_le_bytes([sym[6], sym[7]]));
                let Some(target) = (shndx != 0 && shndx < shnum)
                    .then(|| section(shndx))
                    .flatten()
                else {
                    continue;
                };
                let section_name = str_at(
                    elf,
                    shstr
                        .offset
                        .checked_add(usize::try_from(target.name).ok()?)?,
                )?;
                let sym_name = u32::from_le_bytes([sym[0], sym[1], sym[2], sym[3]]);
                let sym_name = str_at(
                    elf,
                    strtab.offset.checked_add(usize::try_from(sym_name).ok()?)?,
                )?;
                // Section symbols have an empty name.
                if wanted(section_name) && !sym_name.is_empty() {
                    names.push(sym_name.to_owned());
                }
            }
        }
        Some(names)
    }

    struct Section {
        name: u32,
        kind: u32,
        offset: usize,
        size: usize,
        link: usize,
    }

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_le_bytes(
            b.get(at..at.checked_add(2)?)?.try_into().ok()?,
        ))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            b.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    }

    fn u64_at(b: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(
            b.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    }

    fn str_at(b: &[u8], at: usize) -> Option<&str> {
        let rest = b.get(at..)?;
        let end = rest.iter().position(|&c| c == 0)?;
        std::str::from_utf8(rest.get(..end)?).ok()
    }
}

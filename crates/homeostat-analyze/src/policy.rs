//! What a profile permits, as a seccomp policy: the system calls it has seen are
//! allowed, every other call fails with EPERM.
//!
//! A profile is an allow-list in disguise: anything outside its alphabet is an anomaly
//! under every model. Exporting that alphabet as a seccomp filter turns what monitoring
//! learnt into a policy the kernel enforces with no monitor running. This module builds
//! the classic BPF program (the form `seccomp(SECCOMP_SET_MODE_FILTER)` loads, and what
//! `homeostat run --seccomp` loads); the OCI / Docker JSON form is written by the CLI,
//! which has the name tables.

use std::collections::BTreeSet;

/// The architecture words the filter checks come from the one table of syscall facts.
pub use homeostat_syscalls::{AUDIT_ARCH_I386, AUDIT_ARCH_X86_64};
/// `SECCOMP_RET_ALLOW`.
pub const RET_ALLOW: u32 = 0x7fff_0000;
/// `SECCOMP_RET_ERRNO | EPERM`.
pub const RET_EPERM: u32 = 0x0005_0000 | 1;
/// x32 calls carry this bit in their number; an x86_64 allow-list must not admit them.
const X32_BIT: u32 = 0x4000_0000;
/// The kernel's limit on a filter's length.
pub const BPF_MAXINSNS: usize = 4096;

// Classic BPF opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset when true.
    pub jt: u8,
    /// Jump offset when false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

/// The calls to allow, per ABI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// x86_64 call numbers.
    pub x86_64: BTreeSet<u32>,
    /// i386 call numbers.
    pub i386: BTreeSet<u32>,
}

impl Policy {
    /// The classic BPF program: check the ABI, then compare the number against each
    /// allowed call (two instructions a call, so no jump exceeds the 8-bit offsets);
    /// anything else, and any other ABI, returns EPERM.
    pub fn bpf(&self) -> Vec<Insn> {
        let stmt = |code, k| Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        };
        let section = |calls: &BTreeSet<u32>, x32: bool| {
            let mut v = vec![stmt(LD_W_ABS, OFF_NR)];
            if x32 {
                v.push(Insn {
                    code: JMP_JGE_K,
                    jt: 0,
                    jf: 1,
                    k: X32_BIT,
                });
                v.push(stmt(RET_K, RET_EPERM));
            }
            for &nr in calls {
                v.push(Insn {
                    code: JMP_JEQ_K,
                    jt: 0,
                    jf: 1,
                    k: nr,
                });
                v.push(stmt(RET_K, RET_ALLOW));
            }
            v.push(stmt(RET_K, RET_EPERM));
            v
        };
        let x64 = section(&self.x86_64, true);
        let x86 = section(&self.i386, false);
        // Header: ld arch; jeq x86_64 ? next : +1; ja x64; jeq i386 ? next : +1; ja x86;
        // ret EPERM.
        let header_len = 6u32;
        let mut prog = vec![
            stmt(LD_W_ABS, OFF_ARCH),
            Insn {
                code: JMP_JEQ_K,
                jt: 0,
                jf: 1,
                k: AUDIT_ARCH_X86_64,
            },
            // ja is relative to the next instruction (index 3).
            stmt(JMP_JA, header_len - 3),
            Insn {
                code: JMP_JEQ_K,
                jt: 0,
                jf: 1,
                k: AUDIT_ARCH_I386,
            },
            stmt(JMP_JA, header_len - 5 + x64.len() as u32),
            stmt(RET_K, RET_EPERM),
        ];
        prog.extend(x64);
        prog.extend(x86);
        prog
    }

    /// The program as the bytes of a `struct sock_filter` array (little-endian, as on
    /// x86), the file format of `--format bpf`.
    pub fn bpf_bytes(&self) -> Vec<u8> {
        to_bytes(&self.bpf())
    }
}

/// Instructions as `struct sock_filter` bytes.
pub fn to_bytes(prog: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    out
}

/// A filter file that cannot be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilterError {
    /// Not a whole number of instructions, empty, or longer than the kernel takes.
    #[error("a BPF filter file holds 1 to {BPF_MAXINSNS} 8-byte instructions, not {0} bytes")]
    Length(usize),
}

/// Parses `struct sock_filter` bytes (checks only the length: the kernel verifies the
/// program itself when it is loaded).
pub fn from_bytes(bytes: &[u8]) -> Result<Vec<Insn>, FilterError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) || bytes.len() / 8 > BPF_MAXINSNS {
        return Err(FilterError::Length(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| Insn {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Runs a program of the instructions [`Policy::bpf`] emits on one (arch, nr), as the
/// kernel would; `None` for anything else. For tests and `--dry-run` style checks.
pub fn evaluate(prog: &[Insn], arch: u32, nr: u32) -> Option<u32> {
    let mut acc = 0u32;
    let mut pc = 0usize;
    for _ in 0..=prog.len() {
        let i = prog.get(pc)?;
        pc += 1;
        match i.code {
            LD_W_ABS => {
                acc = match i.k {
                    OFF_NR => nr,
                    OFF_ARCH => arch,
                    _ => return None,
                }
            }
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
            JMP_JGE_K => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
            RET_K => return Some(i.k),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_exactly_the_listed_calls_per_abi() {
        let p = Policy {
            x86_64: [0, 1, 59, 231].into(),
            i386: [11, 102].into(),
        };
        let prog = p.bpf();
        let run = |a, n| evaluate(&prog, a, n).unwrap();
        for n in [0, 1, 59, 231] {
            assert_eq!(run(AUDIT_ARCH_X86_64, n), RET_ALLOW);
        }
        for n in [2, 11, 102, 400, X32_BIT | 1] {
            assert_eq!(run(AUDIT_ARCH_X86_64, n), RET_EPERM, "x86_64 {n}");
        }
        assert_eq!(run(AUDIT_ARCH_I386, 11), RET_ALLOW);
        assert_eq!(run(AUDIT_ARCH_I386, 102), RET_ALLOW);
        assert_eq!(run(AUDIT_ARCH_I386, 1), RET_EPERM);
        assert_eq!(run(0xdead, 1), RET_EPERM);
        assert_eq!(from_bytes(&p.bpf_bytes()).unwrap(), prog);
        assert!(from_bytes(&[0; 7]).is_err());
    }

    #[test]
    fn long_lists_keep_short_jumps() {
        let p = Policy {
            x86_64: (0..450).collect(),
            i386: (0..440).collect(),
        };
        let prog = p.bpf();
        assert!(prog.len() <= BPF_MAXINSNS);
        assert_eq!(evaluate(&prog, AUDIT_ARCH_X86_64, 449), Some(RET_ALLOW));
        assert_eq!(evaluate(&prog, AUDIT_ARCH_I386, 439), Some(RET_ALLOW));
        assert_eq!(evaluate(&prog, AUDIT_ARCH_I386, 440), Some(RET_EPERM));
    }
}

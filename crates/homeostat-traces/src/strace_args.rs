//! The argument that matters, read back from a strace line.
//!
//! strace prints every argument decoded, so a trace recorded with `strace -f -o FILE`
//! already holds what the launcher reads from the tracee's memory: the path of an
//! open, the address of a connect. This module parses the few argument shapes
//! [`homeostat_core::symbols::arg_spec`] asks for (string literals, open and mmap flag
//! words, socket address structs, pids) into an [`Arg`]. Anything it does not
//! recognise (an address strace printed as a pointer because it could not read it,
//! a string cut by strace's `-s` limit is still used as a prefix) gives no argument,
//! and the call keeps its plain symbol: a parse failure never fails the read.
//!
//! Relative paths are resolved against the directory strace's `-y` annotates
//! (`AT_FDCWD</srv/www>`, `3</srv/www>`) when it is there; strace does not print the
//! cwd otherwise, so they stay relative (the class says `rel:`).

use homeostat_core::symbols::{self, flags, Arg, ArgSpec, Target};

/// Most arguments split off one line (no call in [`symbols::arg_spec`] looks further).
const MAX_ARGS: usize = 8;
/// Longest decoded string kept (PATH_MAX).
const MAX_STRING: usize = 4096;

/// Splits the text after `name(` into top-level arguments, up to the closing `)`.
fn split_args(s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut esc = false;
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' | b'(' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b')' if depth == 0 => {
                out.push(trim(&s[start..i]));
                return out;
            }
            b')' => depth -= 1,
            b',' if depth == 0 => {
                out.push(trim(&s[start..i]));
                start = i + 1;
                if out.len() >= MAX_ARGS {
                    return out;
                }
            }
            _ => {}
        }
    }
    // An `<unfinished ...>` line ends before the `)`.
    let last = trim(&s[start..]);
    let last = last
        .strip_suffix(b"<unfinished ...>")
        .map(trim)
        .unwrap_or(last);
    if !last.is_empty() {
        out.push(last);
    }
    out
}

fn trim(s: &[u8]) -> &[u8] {
    let a = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let b = s[a..]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    &s[a..s.len() - b]
}

/// Decodes a strace string literal (`"/etc/passwd"`, with C escapes; a trailing
/// `...` means strace cut it, and the prefix is still what it is).
fn string(tok: &[u8]) -> Option<Vec<u8>> {
    let tok = tok.strip_prefix(b"@").unwrap_or(tok);
    let body = tok.strip_prefix(b"\"")?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() && out.len() < MAX_STRING {
        let b = body[i];
        i += 1;
        match b {
            b'"' => return Some(out),
            b'\\' => {
                let c = *body.get(i)?;
                i += 1;
                match c {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'v' => out.push(0x0b),
                    b'f' => out.push(0x0c),
                    b'x' => {
                        let hex = body.get(i..i + 2)?;
                        out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                        i += 2;
                    }
                    b'0'..=b'7' => {
                        let mut v = u32::from(c - b'0');
                        let mut n = 1;
                        while n < 3 && body.get(i).is_some_and(|d| (b'0'..=b'7').contains(d)) {
                            v = v * 8 + u32::from(body[i] - b'0');
                            i += 1;
                            n += 1;
                        }
                        out.push(v as u8);
                    }
                    other => out.push(other),
                }
            }
            b => out.push(b),
        }
    }
    // No closing quote: not a complete literal.
    None
}

/// The directory strace's `-y` printed after a dirfd (`AT_FDCWD</srv>`, `3</srv>`).
fn annotated_dir(tok: &[u8]) -> Option<&[u8]> {
    let open = tok.iter().position(|&b| b == b'<')?;
    let inner = tok[open + 1..].strip_suffix(b">")?;
    inner.starts_with(b"/").then_some(inner)
}

fn integer(tok: &[u8]) -> Option<i64> {
    std::str::from_utf8(tok).ok()?.trim().parse().ok()
}

fn has_flag(tok: &[u8], name: &str) -> bool {
    tok.split(|&b| b == b'|')
        .any(|f| trim(f) == name.as_bytes())
}

/// The `value` of `key=value` inside a struct `{...}` printed by strace.
fn field<'a>(fields: &[&'a [u8]], key: &str) -> Option<&'a [u8]> {
    fields.iter().find_map(|f| {
        f.strip_prefix(key.as_bytes())
            .and_then(|r| r.strip_prefix(b"="))
    })
}

/// `htons(80)` -> 80.
fn port(tok: &[u8]) -> Option<u16> {
    let inner = tok.strip_prefix(b"htons(")?.strip_suffix(b")")?;
    u16::try_from(integer(inner)?).ok()
}

fn sockaddr(tok: &[u8]) -> Option<Arg> {
    let inner = tok.strip_prefix(b"{")?;
    let inner = inner.strip_suffix(b"}").unwrap_or(inner);
    let fields = split_args(inner);
    let family = field(&fields, "sa_family")?;
    match family {
        b"AF_INET" => {
            let a = field(&fields, "sin_addr")?.strip_prefix(b"inet_addr(")?;
            let ip: std::net::Ipv4Addr = std::str::from_utf8(&string(a)?).ok()?.parse().ok()?;
            Some(Arg::Inet {
                addr: ip.octets().to_vec(),
                port: port(field(&fields, "sin_port")?)?,
            })
        }
        b"AF_INET6" => {
            // `inet_pton(AF_INET6, "::1", &sin6_addr)`, a field without a key.
            let pton = fields.iter().find(|f| f.starts_with(b"inet_pton("))?;
            let args = split_args(pton.strip_prefix(b"inet_pton(")?);
            let ip: std::net::Ipv6Addr = std::str::from_utf8(&string(args.get(1)?)?)
                .ok()?
                .parse()
                .ok()?;
            Some(Arg::Inet {
                addr: ip.octets().to_vec(),
                port: port(field(&fields, "sin6_port")?)?,
            })
        }
        b"AF_UNIX" | b"AF_LOCAL" => {
            let p = field(&fields, "sun_path")?;
            let mut path = string(p)?;
            if p.starts_with(b"@") {
                path.insert(0, b'@');
            }
            Some(Arg::Unix { path })
        }
        b"AF_NETLINK" => Some(Arg::Family(16)),
        b"AF_PACKET" => Some(Arg::Family(17)),
        _ => None,
    }
}

/// The [`Arg`] of call `name` from the text after its `(`; `caller` is the line's pid
/// (to tell a signal to oneself from one to another process).
pub(crate) fn parse(name: &str, text: &[u8], caller: Option<u64>) -> Option<Arg> {
    let spec = symbols::arg_spec(name)?;
    let args = split_args(text);
    let path_of = |dirfd: Option<usize>, path: usize| -> Option<Vec<u8>> {
        let p = string(args.get(path)?)?;
        if p.first() == Some(&b'/') {
            return Some(symbols::resolve(b"/", &p));
        }
        match dirfd
            .and_then(|d| args.get(d))
            .and_then(|t| annotated_dir(t))
        {
            Some(base) => Some(symbols::resolve(base, &p)),
            None => Some(p),
        }
    };
    match spec {
        ArgSpec::Exec { dirfd, path } => Some(Arg::Exec {
            path: path_of(dirfd, path)?,
        }),
        ArgSpec::Path {
            dirfd,
            path,
            flags: f,
            creat,
        } => {
            let mut bits = 0;
            if creat {
                bits = flags::CREATE | flags::WRITE;
            }
            if let Some(tok) = f.and_then(|i| args.get(i)) {
                if has_flag(tok, "O_CREAT") {
                    bits |= flags::CREATE;
                }
                if has_flag(tok, "O_WRONLY") || has_flag(tok, "O_RDWR") {
                    bits |= flags::WRITE;
                }
            }
            Some(Arg::Path {
                path: path_of(dirfd, path)?,
                flags: bits,
            })
        }
        ArgSpec::Sockaddr { addr, .. } => sockaddr(args.get(addr)?),
        ArgSpec::Pid { pid } => {
            let p = integer(args.get(pid)?)?;
            let me = caller
                .and_then(|c| i64::try_from(c).ok())
                .unwrap_or(i64::MIN);
            Some(Arg::Target(Target::of_pid(p, me)))
        }
        ArgSpec::Ptrace => {
            if args.first()? == b"PTRACE_TRACEME" {
                return None;
            }
            let p = integer(args.get(1)?)?;
            let me = caller
                .and_then(|c| i64::try_from(c).ok())
                .unwrap_or(i64::MIN);
            Some(Arg::Target(Target::of_pid(p, me)))
        }
        ArgSpec::Prot { prot } => Some(Arg::Prot {
            exec: has_flag(args.get(prot)?, "PROT_EXEC"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, text: &str) -> Option<Arg> {
        parse(name, text.as_bytes(), Some(100))
    }

    fn path(s: &str, f: u8) -> Option<Arg> {
        Some(Arg::Path {
            path: s.as_bytes().to_vec(),
            flags: f,
        })
    }

    #[test]
    fn real_strace_argument_shapes() {
        assert_eq!(
            p(
                "openat",
                r#"AT_FDCWD, "/etc/passwd", O_RDONLY|O_CLOEXEC) = 3"#
            ),
            path("/etc/passwd", 0)
        );
        assert_eq!(
            p(
                "openat",
                r#"AT_FDCWD</srv/www>, "../notes/a", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3"#
            ),
            path("/srv/notes/a", flags::CREATE | flags::WRITE)
        );
        assert_eq!(
            p("openat", r#"AT_FDCWD, "notes/a", O_RDWR <unfinished ...>"#),
            path("notes/a", flags::WRITE)
        );
        assert_eq!(
            p(
                "open",
                r#""/tmp/a\"b\x41\101", O_RDONLY) = -1 ENOENT (No such file or directory)"#
            ),
            path("/tmp/a\"bAA", 0)
        );
        assert_eq!(p("creat", r#""/tmp/x", 0644) = 3"#), path("/tmp/x", 3));
        assert_eq!(
            p(
                "execve",
                r#""/bin/grep", ["grep", "x", "/srv/a"], 0x7ffd /* 20 vars */) = 0"#
            ),
            Some(Arg::Exec {
                path: b"/bin/grep".to_vec()
            })
        );
        assert_eq!(
            p(
                "connect",
                r#"3, {sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr("127.0.0.1")}, 16) = 0"#
            ),
            Some(Arg::Inet {
                addr: vec![127, 0, 0, 1],
                port: 8080
            })
        );
        let six = p(
            "bind",
            r#"3, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0"#,
        );
        let mut one = vec![0u8; 16];
        one[15] = 1;
        assert_eq!(
            six,
            Some(Arg::Inet {
                addr: one,
                port: 443
            })
        );
        assert_eq!(
            p(
                "connect",
                r#"4, {sa_family=AF_UNIX, sun_path="/run/nscd/socket"}, 110) = -1"#
            ),
            Some(Arg::Unix {
                path: b"/run/nscd/socket".to_vec()
            })
        );
        assert_eq!(
            p(
                "connect",
                r#"4, {sa_family=AF_UNIX, sun_path=@"x11"}, 6) = 0"#
            ),
            Some(Arg::Unix {
                path: b"@x11".to_vec()
            })
        );
        assert_eq!(p("sendto", r#"3, "abc", 3, 0, NULL, 0) = 3"#), None);
        assert_eq!(
            p("kill", "100, SIGTERM) = 0"),
            Some(Arg::Target(Target::SelfProcess))
        );
        assert_eq!(
            p("kill", "-1, SIGKILL) = 0"),
            Some(Arg::Target(Target::All))
        );
        assert_eq!(
            p("kill", "7, SIGKILL) = 0"),
            Some(Arg::Target(Target::Other))
        );
        assert_eq!(p("ptrace", "PTRACE_TRACEME) = 0"), None);
        assert_eq!(
            p(
                "mmap",
                "NULL, 8192, PROT_READ|PROT_EXEC, MAP_PRIVATE, 3, 0) = 0x7f"
            ),
            Some(Arg::Prot { exec: true })
        );
        assert_eq!(
            p("mprotect", "0x7f, 4096, PROT_READ) = 0"),
            Some(Arg::Prot { exec: false })
        );
        // Not an argument we read, or garbage: no argument, never a panic.
        assert_eq!(p("read", "3, \"x\", 1) = 1"), None);
        assert_eq!(p("openat", "AT_FDCWD, 0x1234, O_RDONLY) = -1 EFAULT"), None);
        for cut in 0..60 {
            let t = r#"AT_FDCWD, "/etc/pa\x4\"sswd", O_RDONLY|O_CLOEXEC) = 3"#;
            let _ = p("openat", &t[..cut.min(t.len())]);
            let c = r#"3, {sa_family=AF_INET6, sin6_port=htons(4"#;
            let _ = p("connect", &c[..cut.min(c.len())]);
        }
    }
}

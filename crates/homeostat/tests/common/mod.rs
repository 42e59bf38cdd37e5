//! Helpers shared by the `homeostat` binary's integration tests. Each test file is its
//! own crate and uses a subset of these, hence the allow.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_homeostat"))
}

/// A file or folder of the embedded sample (data/sample).
pub fn sample(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/sample")
        .join(part)
}

/// Runs a command that must succeed; returns its standard output.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("homeostat runs");
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A perl storm for the rate-limit tests, `run` and daemon alike: `fork N MS` makes N
/// forks (each child exits at once, the parent waits for it), MS ms apart; `create N
/// MS DIR` creates N files in DIR, MS ms apart.
pub const STORM: &str = r#"
use POSIX ();
my ($kind, $n, $ms, $dir) = @ARGV;
for my $i (1..$n) {
    if ($kind eq "fork") { my $p = fork; if (!$p) { POSIX::_exit(0) } waitpid($p, 0); }
    else { open(my $f, ">", "$dir/f$i") or die "$dir/f$i: $!"; close $f; }
    select(undef, undef, undef, $ms / 1000) if $ms > 0;
}
"#;

/// A 64-bit python making i386 system calls through `int 0x80` (the i386 ABI, as a
/// 32-bit program makes them), each from a page mapped below 4 GiB (MAP_32BIT), as
/// that ABI needs. Arguments: the call, then its own:
/// - `connect N OCTET [PORT]`: `socketcall(SYS_CONNECT)` to 127.0.OCTET.1 ..= N, port
///   PORT (default 9): the arguments are 32-bit words in memory;
/// - `sendmsg N OCTET [PORT]`: the same by `socketcall(SYS_SENDMSG)` with
///   MSG_FASTOPEN (TCP Fast Open), the address in an i386 msghdr;
/// - `creat N MS DIR`: `creat` of DIR/f1 ..= N, MS ms apart.
pub const INT80: &str = r#"
import ctypes, os, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
# PROT_READ|WRITE|EXEC; MAP_PRIVATE|MAP_ANONYMOUS|MAP_32BIT
base = libc.mmap(None, 8192, 7, 0x02 | 0x20 | 0x40, -1, 0)
if base in (None, ctypes.c_void_p(-1).value) or base >= 2**32:
    sys.exit("no page below 4 GiB")
data_at, args_at, msg_at, iov_at = base + 0x100, base + 0x200, base + 0x300, base + 0x400
call, n = sys.argv[1], int(sys.argv[2])

def stub(eax, ebx, ecx):
    # push rbx; mov eax, EAX; mov ebx, EBX; mov ecx, ECX; int 0x80; pop rbx; ret
    code = (bytes([0x53, 0xb8]) + struct.pack('<I', eax) + bytes([0xbb]) + struct.pack('<I', ebx)
            + bytes([0xb9]) + struct.pack('<I', ecx) + bytes([0xcd, 0x80, 0x5b, 0xc3]))
    ctypes.memmove(base, code, len(code))
    return ctypes.CFUNCTYPE(ctypes.c_int)(base)

if call == "creat":
    ms, d = int(sys.argv[3]), sys.argv[4]
    creat32 = stub(8, data_at, 0o644)  # creat(path, 0644)
    for i in range(n):
        p = ("%s/f%d" % (d, i + 1)).encode() + b"\0"
        if len(p) > 4096:
            sys.exit("path too long")
        ctypes.memmove(data_at, p, len(p))
        fd = creat32()
        if fd < 0:
            sys.exit("creat through int 0x80 returned %d" % fd)
        os.close(fd)
        if ms:
            time.sleep(ms / 1000)
    sys.exit(0)

octet = int(sys.argv[3])
port = int(sys.argv[4]) if len(sys.argv) > 4 else 9
# socketcall(SYS_CONNECT or SYS_SENDMSG, args)
socketcall = stub(102, {"connect": 3, "sendmsg": 16}[call], args_at)
# sendmsg's one byte of data (at the pages' end), in one iovec.
ctypes.memmove(iov_at, struct.pack('<II', base + 0x1fff, 1), 8)
for i in range(n):
    s = socket.socket()
    sa = struct.pack('<H', socket.AF_INET) + struct.pack('>H', port) + bytes([127, 0, octet, i + 1]) + bytes(8)
    ctypes.memmove(data_at, sa, 16)
    if call == "connect":
        args = struct.pack('<III', s.fileno(), data_at, 16)
    else:
        # i386 msghdr: name, namelen, iov, iovlen, control, controllen, flags
        ctypes.memmove(msg_at, struct.pack('<7I', data_at, 16, iov_at, 1, 0, 0, 0), 28)
        args = struct.pack('<III', s.fileno(), msg_at, 0x20000000)  # MSG_FASTOPEN
    ctypes.memmove(args_at, args, 12)
    r = socketcall()
    if r not in (0, 1, -111):  # connected (sendmsg: its byte sent), or refused
        sys.exit("%s through int 0x80 returned %d" % (call, r))
    s.close()
"#;

/// perl with its POSIX module, the storm scripts' interpreter (`STORM`): present, or a
/// failure that says so.
pub fn perl() {
    assert!(
        Command::new("perl")
            .args(["-e", "use POSIX (); exit 0"])
            .status()
            .is_ok_and(|s| s.success()),
        "perl (with POSIX) is needed"
    );
}

/// python3, a test dependency (scripts/lib/ensure-deps.sh installs it): its path, or a
/// failure that says so.
pub fn python3() -> &'static std::path::Path {
    let p = std::path::Path::new("/usr/bin/python3");
    assert!(
        p.exists(),
        "python3 is needed (scripts/lib/ensure-deps.sh installs it)"
    );
    p
}

/* Argument classes in the kernel: `homeostat daemon --symbols args` (docs/arguments.md,
 * "The daemon"). Included by homeostat.bpf.c, whose sys_enter calls hs_args() for the
 * calls of interest only: the test is one load from hs_arg_spec, and when the daemon
 * runs with plain calls (hs_args_on == 0, read-only data) the verifier removes the
 * whole hook, so the plain daemon pays nothing.
 *
 * What is read, per call, is NOT decided here: the loader fills hs_arg_spec from
 * homeostat_core::symbols::arg_spec (the one table of the launcher and the recorder).
 * How an argument becomes a class IS repeated here, in C, because the kernel must
 * decide whether a class is known without a round trip: the class is a 64-bit hash of
 * (call kind, the class-making bytes), where the class-making bytes follow the core's
 * class_of (homeostat-core/src/symbols.rs): a path's directory prefix up to
 * hs_path_depth directories (path_hash: the core's resolve + path_prefix), plus its
 * +create/+write bits; an exec's exact path; a socket
 * address's family, scope (loopback / local / remote / any, as the core's ip_scope)
 * and port; a Unix socket's path prefix (or abstract name); a signal's target; PROT_EXEC.
 * The text of a class is never made here: events carry the bytes read, and the daemon
 * names the class with the core's class_of. crates/homeostat-daemon/tests/args.rs runs
 * one real program under both and compares the class sets.
 *
 * A relative path is resolved against its base directory, the cwd or the dirfd's
 * file, as the launcher does through /proc (hs_rel_hash: the base's dentries walked
 * up through its mounts to the root, only the top hs_path_depth names read).
 *
 * Not done in the kernel (documented in docs/arguments.md): a base deeper than
 * HS_WALK_MAX or outside the root (a detached tree), or a Unix socket's relative
 * path, keeps the `rel:` class of an unresolved path; an exec path is hashed as given
 * (not normalised); an argument the kernel cannot read without a page fault
 * (bpf_probe_read_user* never faults) is counted and the call is not tested for it. */
#ifndef __HOMEOSTAT_ARGS_H__
#define __HOMEOSTAT_ARGS_H__

/* Loader-set, read-only once loaded. */
const volatile __u32 hs_args_on = 0;
const volatile __u32 hs_path_depth = 2;
const volatile __u32 hs_max_classes = 256;
/* fexit/do_sys_openat2 is loaded: an open whose path was not resident is retried. */
const volatile __u32 hs_open_fallback = 0;
/* Per call number (x86_64, < HS_ROW): HS_SPEC_* kind in bits 0-3, the register of the
 * path / address / pid / protection in bits 4-7, of the open flags in 8-11 (15: none),
 * of the address length in 12-15, HS_SPEC_CREAT. 0: no argument read. */
const volatile __u32 hs_arg_spec[HS_ROW] = {};

#define HS_SPEC_PATH 1
#define HS_SPEC_EXEC 2
#define HS_SPEC_SOCKADDR 3
#define HS_SPEC_PID 4
#define HS_SPEC_PTRACE 5
#define HS_SPEC_PROT 6
#define HS_SPEC_CREAT (1 << 16)
/* Bits 20-23: the register of the dirfd of a *at call (15: none, the cwd). */
#define HS_SPEC_DIRFD_SHIFT 20

/* hs_class_event.arg_kind: what `data` holds. */
#define HS_ARG_PATH 1     /* a NUL-terminated path; flags: +create (1), +write (2),
			   * HS_PATH_RESOLVED (4): data is relative to `base` */
#define HS_ARG_EXEC 2     /* a NUL-terminated path */
#define HS_ARG_SOCKADDR 3 /* len bytes of a struct sockaddr */
#define HS_ARG_TARGET 4   /* flags: homeostat_core Target code */
#define HS_ARG_PROT 5     /* flags: 1 if PROT_EXEC */

/* event.kind */
#define HS_EV_NEW_CLASS 5    /* training: a class the profile had not seen (learnt) */
#define HS_EV_UNSEEN_CLASS 6 /* normal: a class training never saw (a miss) */

#define HS_ARG_BYTES 256
/* A relative path resolved in the kernel: its base directory's top components are in
 * hs_class_event.base ("/a/b"), the base's depth in base_dirs. */
#define HS_PATH_RESOLVED 4
#define HS_BASE_BYTES 512
/* Most directories walked up from a base directory (mount crossings count too); a
 * deeper base is not resolved (the path keeps its `rel:` class). */
#define HS_WALK_MAX 64
#define HS_UNREAD 1 /* hs_class_event.pad2 in the scratch: the argument was not readable */
#define HS_SOCKADDR_BYTES 128
#define HS_MAX_DEPTH 8
/* Classes of all profiles; a profile holds at most hs_max_classes of them. */
#define HS_CLASSES 65536
/* The class of calls past a profile's cap: the core's `other` class of the call. */
#define HS_CLASS_OTHER 0

/* hs_arg_stats indices (per-CPU) */
#define HS_ASTAT_OVERFLOW 0 /* training calls whose class went to `other` (cap reached) */
#define HS_ASTAT_MAP_FULL 1 /* hs_classes full: a class was not learnt */
#define HS_ASTAT_UNREAD 2   /* argument not readable (even at an open's exit): not tested */
#define HS_ASTAT_LOST 3     /* class event dropped (ring buffer full) */
#define HS_ANSTATS 4

struct hs_class_key {
	__u32 slot;
	__u16 call;
	__u16 pad;
	__u64 hash;
};

struct hs_class_event {
	struct hs_event ev; /* kind HS_EV_NEW_CLASS / HS_EV_UNSEEN_CLASS; nr: the call */
	__u32 arg_kind;
	__u32 arg_flags;
	__u32 len;          /* bytes of data used */
	__u32 pad2;         /* 0 in events */
	__u64 hash;
	char data[HS_ARG_BYTES];
	/* HS_PATH_RESOLVED: the base directory's first min(base_dirs, path depth)
	 * components, "/a/b" (NUL-terminated; "" for the root). The deeper components
	 * were not read: they never make the class, and a `..` that pops them is
	 * counted the same without their names. */
	__u32 base_dirs;
	__u32 pad3;
	char base[HS_BASE_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HS_CLASSES);
	__type(key, struct hs_class_key);
	__type(value, __u32);
} hs_classes SEC(".maps");

/* Classes learnt per profile slot (not counting `other`), for the cap. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HS_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} hs_class_count SEC(".maps");

/* The argument read, before it is known whether it is new (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hs_class_event);
} hs_arg_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HS_ANSTATS);
	__type(key, __u32);
	__type(value, __u64);
} hs_arg_stats SEC(".maps");

/* Never used: makes libbpf-cargo generate the event's Rust type. */
struct hs_class_event hs_abi_class_event;

/* The user registers of the call; a flavour of pt_regs with the argument registers
 * (CO-RE matches it to the kernel's struct pt_regs). */
struct pt_regs___hs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long r10;
	unsigned long r8;
	unsigned long r9;
} __attribute__((preserve_access_index));

static __always_inline void acount(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&hs_arg_stats, &which);

	if (v)
		*v += 1;
}

static __always_inline __u64 reg_arg(struct pt_regs___hs *r, __u32 i)
{
	switch (i) {
	case 0: return BPF_CORE_READ(r, di);
	case 1: return BPF_CORE_READ(r, si);
	case 2: return BPF_CORE_READ(r, dx);
	case 3: return BPF_CORE_READ(r, r10);
	case 4: return BPF_CORE_READ(r, r8);
	default: return BPF_CORE_READ(r, r9);
	}
}

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define MIX(h, b) (((h) ^ (__u8)(b)) * FNV_PRIME)

/* Indexes into path_walk.stack are masked with this (a power of two minus one, above
 * HS_MAX_DEPTH): the verifier's bound, never a wrap. */
#define HS_STACK_MASK 15

struct path_walk {
	__u64 stack[HS_STACK_MASK + 1]; /* stack[k]: the hash of the first k directories */
	__u64 cur;                     /* the component so far, over its level's prefix */
	struct hs_class_event *s;      /* the scratch holding the path */
	__u32 off, len, n, clen, depth, abs;
	__u32 in_base;                 /* read s->base, not s->data */
	char first, second;
};

/* One byte of path_hash (a bpf_loop callback: verified once, however long the path;
 * an open-coded loop made the verifier walk every length and depth apart). */
static long path_byte(__u64 i, void *ctx)
{
	struct path_walk *w = ctx;
	struct hs_class_event *s = w->s;
	__u32 n = w->n, depth = w->depth;
	char c = 0;

	if (i < w->len)
		c = w->in_base ? s->base[(w->off + i) & (HS_BASE_BYTES - 1)]
			       : s->data[(w->off + i) & (HS_ARG_BYTES - 1)];
	if (c != '/' && c != 0) {
		if (w->clen == 0) {
			w->first = c;
			w->cur = w->stack[(n <= depth ? n : depth) & HS_STACK_MASK];
		} else if (w->clen == 1) {
			w->second = c;
		}
		w->cur = MIX(w->cur, c);
		w->clen++;
		return 0;
	}
	if (w->clen == 0 || (w->clen == 1 && w->first == '.')) {
		/* empty or "." */
	} else if (w->abs && w->clen == 2 && w->first == '.' && w->second == '.') {
		if (n > 0)
			n--;
	} else {
		n++;
		if (n <= depth)
			w->stack[n & HS_STACK_MASK] = MIX(w->cur, '/');
	}
	w->n = n;
	w->clen = 0;
	return c == 0;
}

/* The class hash of the path of `len` bytes (NUL included) at `off` in the scratch
 * event's data: its components, "" and "." dropped; in an absolute path ".." pops one
 * (the core's resolve), in a relative one it is kept (the core's path_prefix of an
 * unresolved path); the directories among them up to hs_path_depth (the last
 * component is the file itself). */
static __always_inline __u64 path_hash(struct hs_class_event *s, __u32 off, __u32 len,
				       __u64 seed)
{
	struct path_walk w = {};
	__u32 dirs;

	w.depth = hs_path_depth > HS_MAX_DEPTH ? HS_MAX_DEPTH : hs_path_depth;
	w.abs = s->data[off & (HS_ARG_BYTES - 1)] == '/';
	w.s = s;
	w.off = off;
	w.len = len;
	w.stack[0] = MIX(seed, w.abs ? '/' : 'r');
	bpf_loop(HS_ARG_BYTES + 1, path_byte, &w, 0);
	dirs = w.n > 0 ? w.n - 1 : 0;
	return w.stack[(dirs < w.depth ? dirs : w.depth) & HS_STACK_MASK];
}

/* Flavours of the kernel's VFS types, only the fields the walk reads (CO-RE matches
 * them to the running kernel's; the suffix keeps them apart from vmlinux.h's). */
struct qstr___hs {
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry___hs {
	struct dentry___hs *d_parent;
	struct qstr___hs d_name;
} __attribute__((preserve_access_index));

struct vfsmount___hs {
	struct dentry___hs *mnt_root;
} __attribute__((preserve_access_index));

struct mount___hs {
	struct mount___hs *mnt_parent;
	struct dentry___hs *mnt_mountpoint;
	struct vfsmount___hs mnt;
} __attribute__((preserve_access_index));

struct path___hs {
	struct vfsmount___hs *mnt;
	struct dentry___hs *dentry;
} __attribute__((preserve_access_index));

struct fs_struct___hs {
	struct path___hs pwd;
} __attribute__((preserve_access_index));

struct file___hs {
	struct path___hs f_path;
} __attribute__((preserve_access_index));

struct fdtable___hs {
	unsigned int max_fds;
	struct file___hs **fd;
} __attribute__((preserve_access_index));

struct files_struct___hs {
	struct fdtable___hs *fdt;
} __attribute__((preserve_access_index));

struct task_struct___hs {
	struct fs_struct___hs *fs;
	struct files_struct___hs *files;
} __attribute__((preserve_access_index));

#define HS_AT_FDCWD -100

/* Walking up from a base directory to the root, as d_path does: a mount's root steps
 * to its mountpoint in the parent mount; the root of the root mount ends the walk. */
struct dir_walk {
	__u64 seen[HS_STACK_MASK + 1]; /* seen[k & mask]: the k-th dentry walked (from the base) */
	struct dentry___hs *d;
	struct mount___hs *m;
	struct dentry___hs *mroot;
	struct hs_class_event *s; /* the scratch: the top names go to s->base */
	__u32 n;    /* components walked */
	__u32 done; /* reached the root */
	__u32 off;  /* bytes of s->base filled */
	__u32 bad;  /* a top name could not be read, or they are too long */
};

static long dir_step(__u64 i, void *ctx)
{
	struct dir_walk *w = ctx;
	struct dentry___hs *d = w->d, *parent;
	struct mount___hs *pm;

	if (!d || !w->m)
		return 1;
	if (d == w->mroot) {
		struct mount___hs *m = w->m;

		pm = BPF_CORE_READ(m, mnt_parent);
		if (!pm || pm == m) {
			w->done = 1;
			return 1;
		}
		w->d = BPF_CORE_READ(m, mnt_mountpoint);
		w->m = pm;
		w->mroot = BPF_CORE_READ(pm, mnt.mnt_root);
		return 0;
	}
	parent = BPF_CORE_READ(d, d_parent);
	if (!parent || parent == d) {
		/* The root of a file system that is not a mount's root (a detached one):
		 * no path from the root; not resolved. */
		return 1;
	}
	w->seen[w->n & HS_STACK_MASK] = (__u64)d;
	w->n++;
	w->d = parent;
	return 0;
}

/* One of the base's top components into s->base, root first. */
static long name_step(__u64 k, void *ctx)
{
	struct dir_walk *c = ctx;
	struct dentry___hs *d = (void *)c->seen[(c->n - 1 - k) & HS_STACK_MASK];
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	__u32 off = c->off;
	long r;

	if (off >= HS_ARG_BYTES - 1) {
		c->bad = 1;
		return 1;
	}
	c->s->base[off & (HS_ARG_BYTES - 1)] = '/';
	r = bpf_probe_read_kernel_str(&c->s->base[(off + 1) & (HS_ARG_BYTES - 1)], HS_ARG_BYTES,
				      name);
	if (r <= 1) {
		c->bad = 1;
		return 1;
	}
	c->off = off + r; /* past the name, on its NUL */
	return 0;
}

/* The class hash of the relative path in the scratch event's data (s->len bytes)
 * resolved against its base directory: the cwd (dirfd AT_FDCWD) or the dirfd's file.
 * `arg`: dirfd (low 32 bits, signed) | seed flags << 32. Returns 0 when the base
 * cannot be found (no such fd, a base deeper than HS_WALK_MAX, a detached tree, a
 * top component too long): the caller keeps the `rel:` class. On success the event
 * carries the base (HS_PATH_RESOLVED), so the daemon names the resolved path.
 *
 * Only the top hs_path_depth components of the base can make the class: `..` in the
 * relative part pops the base lexically (the core's resolve), and a pop only needs
 * the count of the components below, not their names. So the walk up keeps the
 * dentries of the last hs_path_depth steps (the top ones come last) and their names
 * alone are read. A global function: verified once on its own. */
__attribute__((noinline)) __u64 hs_rel_hash(__u64 arg)
{
	struct task_struct___hs *task = (void *)bpf_get_current_task_btf();
	__s32 dirfd = (__s32)arg;
	__u32 zero = 0, kept, base_len;
	struct hs_class_event *s;
	struct vfsmount___hs *mnt;
	struct dentry___hs *dentry;
	struct dir_walk w = {};
	struct path_walk p = {};
	__u32 dirs;

	s = bpf_map_lookup_elem(&hs_arg_scratch, &zero);
	if (!s)
		return 0;
	if (dirfd == HS_AT_FDCWD) {
		mnt = BPF_CORE_READ(task, fs, pwd.mnt);
		dentry = BPF_CORE_READ(task, fs, pwd.dentry);
	} else {
		struct fdtable___hs *fdt = BPF_CORE_READ(task, files, fdt);
		struct file___hs **fds, *f = NULL;

		if (dirfd < 0 || !fdt || (__u32)dirfd >= BPF_CORE_READ(fdt, max_fds))
			return 0;
		fds = BPF_CORE_READ(fdt, fd);
		if (bpf_probe_read_kernel(&f, sizeof(f), &fds[dirfd]) || !f)
			return 0;
		mnt = BPF_CORE_READ(f, f_path.mnt);
		dentry = BPF_CORE_READ(f, f_path.dentry);
	}
	if (!mnt || !dentry)
		return 0;
	w.d = dentry;
	w.m = (void *)((char *)mnt - bpf_core_field_offset(struct mount___hs, mnt));
	w.mroot = BPF_CORE_READ(mnt, mnt_root);
	bpf_loop(HS_WALK_MAX, dir_step, &w, 0);
	if (!w.done)
		return 0;

	p.depth = hs_path_depth > HS_MAX_DEPTH ? HS_MAX_DEPTH : hs_path_depth;
	kept = w.n < p.depth ? w.n : p.depth;
	w.s = s;
	if (kept)
		bpf_loop(kept, name_step, &w, 0);
	if (w.bad)
		return 0;
	base_len = w.off;
	s->base[base_len & (HS_BASE_BYTES - 1)] = 0;

	/* The base's components, all directories, then the relative path on top. */
	p.s = s;
	p.abs = 1;
	p.stack[0] = MIX(MIX(MIX(FNV_OFFSET, HS_ARG_PATH), arg >> 32), '/');
	p.in_base = 1;
	p.len = base_len + 1;
	bpf_loop(HS_BASE_BYTES + 1, path_byte, &p, 0);
	p.n = w.n; /* the unread deeper components: counted, never part of the class */
	p.in_base = 0;
	p.clen = 0;
	p.off = 0;
	p.len = s->len;
	bpf_loop(HS_ARG_BYTES + 1, path_byte, &p, 0);
	dirs = p.n > 0 ? p.n - 1 : 0;
	s->arg_flags |= HS_PATH_RESOLVED;
	s->base_dirs = w.n;
	return p.stack[(dirs < p.depth ? dirs : p.depth) & HS_STACK_MASK];
}

/* FNV-1a of `len` bytes at `off` in `b`. */
static __always_inline __u64 bytes_hash(const char *b, __u32 off, __u32 len, __u64 h)
{
	__u32 i;

	for (i = 0; i < HS_ARG_BYTES; i++) {
		if (i >= len)
			break;
		h = MIX(h, b[(off + i) & (HS_ARG_BYTES - 1)]);
	}
	return h;
}

/* The core's ip_scope, as a code (0 loopback, 1 local, 2 remote, 3 any). */
static __always_inline __u32 scope4(const __u8 *a)
{
	if (a[0] == 127)
		return 0;
	if (a[0] == 10 || (a[0] == 192 && a[1] == 168) || (a[0] == 169 && a[1] == 254) ||
	    (a[0] == 172 && a[1] >= 16 && a[1] < 32))
		return 1;
	if (a[0] == 0)
		return 3;
	return 2;
}

static __always_inline __u32 scope6(const __u8 *a)
{
	__u64 hi = 0, lo = 0;
	__u32 i;

	for (i = 0; i < 8; i++) {
		hi = hi << 8 | a[i];
		lo = lo << 8 | a[8 + i];
	}
	if (hi == 0 && (lo >> 32) == 0xffff)
		return scope4(a + 12);
	if (hi == 0 && (lo >> 8) == 0)
		return a[15] == 1 ? 0 : 3;
	if (a[0] == 0xfc || a[0] == 0xfd || (a[0] == 0xfe && (a[1] & 0xc0) == 0x80))
		return 1;
	return 2;
}

/* The class hash of the sockaddr in s->data (s->len bytes); 0 if there is none. */
static __always_inline __u64 sockaddr_hash(struct hs_class_event *s)
{
	__u8 *d = (__u8 *)s->data;
	__u16 fam = d[0] | (__u16)d[1] << 8;
	__u64 h = MIX(MIX(FNV_OFFSET, HS_ARG_SOCKADDR), fam & 0xff);

	h = MIX(h, fam >> 8);
	if (s->len < 2)
		return 0;
	if (fam == 2 /* AF_INET */ && s->len >= 8)
		return MIX(MIX(MIX(h, scope4(d + 4)), d[2]), d[3]);
	if (fam == 10 /* AF_INET6 */ && s->len >= 24)
		return MIX(MIX(MIX(MIX(h, 6), scope6(d + 8)), d[2]), d[3]);
	if (fam == 1 /* AF_UNIX */) {
		__u32 n = s->len - 2;

		if (d[2] == 0)
			return bytes_hash(s->data, 3, n > 1 ? n - 1 : 0, MIX(h, '@'));
		/* A filesystem socket: its path prefix. */
		return path_hash(s, 2, n, h);
	}
	return h;
}

/* The argument of call `cur` read into the scratch event, and its class hash (never
 * 0); 0: nothing to classify (no argument, or unreadable: counted). */
static __always_inline __u64 arg_read(struct task_struct *task, __u32 spec,
				      struct hs_class_event *s, __u32 tgid)
{
	struct pt_regs___hs *r = (struct pt_regs___hs *)bpf_task_pt_regs(task);
	__u32 kind = spec & 15, flags_reg = (spec >> 8) & 15;
	__u64 a = reg_arg(r, (spec >> 4) & 15), h;
	long n;

	s->arg_flags = 0;
	s->len = 0;
	s->pad2 = 0;
	s->base_dirs = 0;
	s->base[0] = 0;
	switch (kind) {
	case HS_SPEC_PATH:
	case HS_SPEC_EXEC:
		if (kind == HS_SPEC_PATH && flags_reg < 6) {
			__u64 o = reg_arg(r, flags_reg);

			s->arg_flags = ((o & 0100) ? 1 : 0) | ((o & 3) ? 2 : 0);
		}
		if (spec & HS_SPEC_CREAT)
			s->arg_flags = 3;
		n = bpf_probe_read_user_str(s->data, HS_ARG_BYTES, (void *)a);
		if (n <= 0) {
			/* Not resident: the caller counts it, or retries an open at its exit. */
			s->pad2 = HS_UNREAD;
			return 0;
		}
		s->len = n;
		if (kind == HS_SPEC_EXEC) {
			s->arg_kind = HS_ARG_EXEC;
			h = bytes_hash(s->data, 0, n, MIX(FNV_OFFSET, HS_ARG_EXEC));
			break;
		}
		s->arg_kind = HS_ARG_PATH;
		if (s->data[0] != '/') {
			__u32 dreg = (spec >> HS_SPEC_DIRFD_SHIFT) & 15;
			__s32 dirfd = dreg < 6 ? (__s32)reg_arg(r, dreg) : HS_AT_FDCWD;

			h = hs_rel_hash((__u64)s->arg_flags << 32 | (__u32)dirfd);
			if (h)
				break;
		}
		h = path_hash(s, 0, n, MIX(MIX(FNV_OFFSET, HS_ARG_PATH), s->arg_flags));
		break;
	case HS_SPEC_SOCKADDR: {
		__u64 len = reg_arg(r, (spec >> 12) & 15);

		if (!a)
			return 0; /* sendto on a connected socket: no address */
		if (len > HS_SOCKADDR_BYTES)
			len = HS_SOCKADDR_BYTES;
		if (len < 2)
			return 0;
		if (bpf_probe_read_user(s->data, len, (void *)a)) {
			s->pad2 = HS_UNREAD;
			return 0;
		}
		s->arg_kind = HS_ARG_SOCKADDR;
		s->len = len;
		h = sockaddr_hash(s);
		break;
	}
	case HS_SPEC_PTRACE:
		if (BPF_CORE_READ(r, di) == 0 /* PTRACE_TRACEME */)
			return 0;
		a = BPF_CORE_READ(r, si);
		/* fall through */
	case HS_SPEC_PID: {
		__s32 pid = (__s32)a;

		s->arg_kind = HS_ARG_TARGET;
		/* The core's Target::code: self 0, own group 1, all 2, group 3, other 4. */
		s->arg_flags = pid == 0 ? 1 : pid == -1 ? 2 : pid < -1 ? 3 : (__u32)pid == tgid ? 0 : 4;
		h = MIX(MIX(FNV_OFFSET, HS_ARG_TARGET), s->arg_flags);
		break;
	}
	case HS_SPEC_PROT:
		s->arg_kind = HS_ARG_PROT;
		s->arg_flags = (a & 4) ? 1 : 0;
		h = MIX(MIX(FNV_OFFSET, HS_ARG_PROT), s->arg_flags);
		break;
	default:
		return 0;
	}
	return h == HS_CLASS_OTHER ? 1 : h;
}

static __always_inline void emit_class(struct hs_config *cfg, struct hs_class_event *s,
				       __u32 kind, __u32 pid, __u32 tid, __u32 nr,
				       struct hs_task *t, __u64 h)
{
	fill(&s->ev, kind, pid, tid, nr, &t->key, 0, t->lfc, 0);
	s->hash = h;
	s->pad2 = 0;
	if (bpf_ringbuf_output(&hs_events, s, sizeof(*s), wakeup_flags(cfg)))
		acount(HS_ASTAT_LOST);
}

/* Learns (training) or tests (normal) class `h` of call `cur`, whose argument is in
 * the scratch event `s`: returns bit 0 set when a normal profile never saw it (a miss,
 * for the locality frame), bit 1 set when a class was learnt (counted like a new pair). */
static __always_inline __u32 class_test(struct hs_config *cfg, struct hs_task *t,
					struct hs_class_event *s, __u32 cur, bool training,
					__u32 pid, __u32 tid, __u64 h)
{
	struct hs_class_key k = { .slot = t->slot, .call = cur, .pad = 0, .hash = h };
	__u32 one = 1, *count;
	long err;

	if (bpf_map_lookup_elem(&hs_classes, &k))
		return 0;
	count = bpf_map_lookup_elem(&hs_class_count, &k.slot);
	if (!count)
		return 0;
	if (!training) {
		/* A profile that learnt no class (made normal before classes were on, or
		 * loaded from a file without them) is tested on its calls only. */
		if (*count == 0)
			return 0;
		k.hash = HS_CLASS_OTHER;
		if (bpf_map_lookup_elem(&hs_classes, &k))
			return 0; /* the call's classes overflowed in training: `other` */
		emit_class(cfg, s, HS_EV_UNSEEN_CLASS, pid, tid, cur, t, h);
		return 1;
	}
	if (*count >= hs_max_classes) {
		acount(HS_ASTAT_OVERFLOW);
		k.hash = HS_CLASS_OTHER;
		return bpf_map_update_elem(&hs_classes, &k, &one, BPF_NOEXIST) ? 0 : 2;
	}
	err = bpf_map_update_elem(&hs_classes, &k, &one, BPF_NOEXIST);
	if (err) {
		if (err != -17 /* EEXIST: another CPU learnt it */)
			acount(HS_ASTAT_MAP_FULL);
		return 0;
	}
	__sync_fetch_and_add(count, 1);
	emit_class(cfg, s, HS_EV_NEW_CLASS, pid, tid, cur, t, h);
	return 2;
}

/* An open whose path could not be read at sys_enter (its page not yet mapped in the
 * caller: the programs never fault), to be classified when the open returns (the
 * kernel has read the path by then, so its page is mapped): fexit/do_sys_openat2. */
struct hs_pending {
	__u32 fpos;     /* the task's fpos after the call: no other call came between */
	__u32 call;     /* 0: none pending */
	__u32 flags;    /* +create / +write */
	__u32 training;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct hs_pending);
} hs_arg_pending SEC(".maps");

/* The calls that go through do_sys_openat2: open, creat, openat, openat2. */
static __always_inline bool is_open(__u32 cur)
{
	return cur == 2 || cur == 85 || cur == 257 || cur == 437;
}

/* The class test of call `cur` (x86_64, has an hs_arg_spec entry); returns as
 * class_test. A global function: the verifier checks it once on its own instead of
 * once per path of sys_enter that reaches it (inlined or static, sys_enter with the
 * task's table of known pairs exceeded the verifier's 1M-instruction budget). Its
 * pointer argument is therefore taken as possibly NULL and checked. */
__attribute__((noinline)) __u32 hs_args(struct hs_task *t, __u64 call)
{
	/* Packed: spec << 32 | training << 16 | cur. The config and the caller's ids are
	 * fetched here, not passed: sys_enter's common path no longer fetches them. */
	struct hs_config *cfg = get_config();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 cur = call & 0xffff, spec = call >> 32, tid = (__u32)pid_tgid, pid = pid_tgid >> 32;
	bool training = (call >> 16) & 1;
	struct task_struct *task = bpf_get_current_task_btf();
	struct hs_class_event *s;
	struct hs_pending *pd;
	__u32 zero = 0;
	__u64 h;

	if (!cfg || !t)
		return 0;
	s = bpf_map_lookup_elem(&hs_arg_scratch, &zero);
	if (!s)
		return 0;
	h = arg_read(task, spec, s, pid);
	if (h)
		return class_test(cfg, t, s, cur, training, pid, tid, h);
	if (s->pad2 == HS_UNREAD) {
		if (hs_open_fallback && is_open(cur)) {
			pd = bpf_task_storage_get(&hs_arg_pending, task, 0,
						  BPF_LOCAL_STORAGE_GET_F_CREATE);
			if (pd) {
				pd->fpos = (t->fpos + 1) & (HS_LOCALITY - 1);
				pd->call = cur;
				pd->flags = s->arg_flags;
				pd->training = training;
				return 0;
			}
		}
		acount(HS_ASTAT_UNREAD);
	}
	return 0;
}

/* An open whose path sys_enter could not read: classified now, with the same test.
 * A miss counts in the locality frame slot of the open, which sys_enter has filled. */
SEC("fexit/do_sys_openat2")
int BPF_PROG(hs_open_exit, int dfd, const char *filename, void *how, long ret)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid, pid = pid_tgid >> 32, zero = 0, call, r, pos;
	struct hs_pending *pd = bpf_task_storage_get(&hs_arg_pending, task, 0, 0);
	struct hs_config *cfg;
	struct hs_class_event *s;
	struct hs_profile *p;
	struct hs_task *t;
	bool training;
	__u64 h;
	long n;

	if (!pd || !pd->call)
		return 0;
	call = pd->call;
	pd->call = 0;
	t = bpf_task_storage_get(&hs_tasks, task, 0, 0);
	cfg = get_config();
	s = bpf_map_lookup_elem(&hs_arg_scratch, &zero);
	if (!t || !cfg || !s || t->valid != HS_VALID || t->fpos != pd->fpos)
		return 0;
	n = bpf_probe_read_user_str(s->data, HS_ARG_BYTES, filename);
	if (n <= 0) {
		acount(HS_ASTAT_UNREAD);
		return 0;
	}
	training = pd->training;
	s->len = n;
	s->arg_kind = HS_ARG_PATH;
	s->arg_flags = pd->flags;
	s->base_dirs = 0;
	s->base[0] = 0;
	h = 0;
	if (s->data[0] != '/')
		h = hs_rel_hash((__u64)s->arg_flags << 32 | (__u32)dfd);
	if (!h)
		h = path_hash(s, 0, n, MIX(MIX(FNV_OFFSET, HS_ARG_PATH), s->arg_flags));
	r = class_test(cfg, t, s, call, training, pid, tid, h == HS_CLASS_OTHER ? 1 : h);
	if (!r)
		return 0;
	p = bpf_map_lookup_elem(&hs_profiles, &t->key);
	if (!p)
		return 0;
	if (r & 2)
		__sync_fetch_and_add(&p->new_pairs, 1);
	if (r & 1) {
		pos = (t->fpos - 1) & (HS_LOCALITY - 1);
		if (!((t->frame[(pos >> 6) & 1] >> (pos & 63)) & 1)) {
			t->frame[(pos >> 6) & 1] |= 1ULL << (pos & 63);
			t->lfc++;
		}
		__sync_fetch_and_add(&p->anomalies, 1);
		emit(cfg, HS_EV_ANOMALY, pid, tid, call, &t->key, 1, t->lfc,
		     (p->respond && respond_stop(task, pid, tid, call) ? HS_EVF_STOPPED : 0) |
		     (t->cached & HS_CACHE_FOREIGN ? HS_EVF_FOREIGN : 0));
	}
	return 0;
}

#endif

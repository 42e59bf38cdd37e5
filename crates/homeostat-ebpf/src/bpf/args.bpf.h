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
	percpu_add(&hs_arg_stats, which);
}

/* Direct loads: the registers' pointer is typed (bpf_task_pt_regs returns a BTF
 * pointer), so each read is one load, not a bpf_probe_read_kernel call. */
static __always_inline __u64 reg_arg(struct pt_regs___hs *r, __u32 i)
{
	switch (i) {
	case 0: return r->di;
	case 1: return r->si;
	case 2: return r->dx;
	case 3: return r->r10;
	case 4: return r->r8;
	default: return r->r9;
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
	__u32 pos;                     /* path_run: the next byte (from off) */
	char first, second;
};

/* The end of a component at the '/' or NUL `c`: path_byte's second half. */
static __always_inline long path_sep(struct path_walk *w, char c)
{
	__u32 n = w->n;

	if (w->clen == 0 || (w->clen == 1 && w->first == '.')) {
		/* empty or "." */
	} else if (w->abs && w->clen == 2 && w->first == '.' && w->second == '.') {
		if (n > 0)
			n--;
	} else {
		n++;
		if (n <= w->depth)
			w->stack[n & HS_STACK_MASK] = MIX(w->cur, '/');
	}
	w->n = n;
	w->clen = 0;
	return c == 0;
}

/* One byte of path_hash (a bpf_loop callback: verified once, however long the path;
 * an open-coded loop made the verifier walk every length and depth apart). Used for
 * the base directory's names (s->base); s->data goes through path_run. */
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
	return path_sep(w, c);
}

#define HS_ONES 0x0101010101010101ULL
#define HS_HIGHS 0x8080808080808080ULL

/* path_byte over s->data, up to 8 bytes a callback: the bytes before the next '/' or
 * NUL (found in a word at once) are hashed together, then that byte ends its
 * component. The same hash as path_byte, in about a quarter of the callbacks (each
 * costs a call; find's and tar's relative names are one component of 10-20 bytes). */
static long path_run(__u64 i, void *ctx)
{
	struct path_walk *w = ctx;
	struct hs_class_event *s = w->s;
	__u32 at = w->off + w->pos, left = w->len > w->pos ? w->len - w->pos : 0, k, j;
	__u64 x = 0, sp, h, hs[8];

	if (at <= HS_ARG_BYTES - 8) {
		x = *(__u64 *)&s->data[at];
	} else {
#pragma unroll
		for (j = 0; j < 8; j++)
			x |= (__u64)(__u8)s->data[(at + j) & (HS_ARG_BYTES - 1)] << (8 * j);
	}
	/* Bytes past the length read as NUL, as in path_byte. */
	if (left < 8)
		x &= (1ULL << (8 * left)) - 1;
	/* The lowest zero byte of x or of x ^ '/'s is exact (borrows only go up). */
	sp = x ^ (HS_ONES * '/');
	sp = ((x - HS_ONES) & ~x & HS_HIGHS) | ((sp - HS_ONES) & ~sp & HS_HIGHS);
	/* The lowest set bit is bit 7 of byte k: 1 << 8k times bytes 7 - j has k on top. */
	k = sp ? ((((sp & -sp) >> 7) * 0x0001020304050607ULL) >> 56) & 7 : 8;
	if (k) {
		if (w->clen == 0) {
			w->first = x;
			w->cur = w->stack[(w->n <= w->depth ? w->n : w->depth) & HS_STACK_MASK];
		}
		if (w->clen <= 1 && w->clen + k >= 2)
			w->second = w->clen ? x : x >> 8;
		h = w->cur;
#pragma unroll
		for (j = 0; j < 8; j++) {
			h = MIX(h, x >> (8 * j));
			hs[j] = h;
		}
		w->cur = hs[(k - 1) & 7];
		w->clen += k;
	}
	w->pos += k;
	if (k == 8)
		return 0;
	w->pos++;
	return path_sep(w, x >> (8 * k));
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
	bpf_loop(HS_ARG_BYTES + 1, path_run, &w, 0);
	dirs = w.n > 0 ? w.n - 1 : 0;
	return w.stack[(dirs < w.depth ? dirs : w.depth) & HS_STACK_MASK];
}

/* Flavours of the kernel's VFS types, only the fields the walk reads (CO-RE matches
 * them to the running kernel's; the suffix keeps them apart from vmlinux.h's). */
struct qstr___hs {
	__u64 hash_len; /* the name's dcache hash and length: it changes with the name */
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

/* The top components of base directories, cached per CPU: a relative open's class
 * needs the names of its base's top hs_path_depth directories, hashed, and reading
 * and hashing them was most of the price of a relative path (find and tar open every
 * directory relative to its parent's fd). An entry maps (the hash of the components
 * above, a dentry, the dentry's d_name.hash_len) to the hash with this component,
 * stack[k] of path_walk. So the bases below
 * /usr/share share two entries, whichever task opens them. The walk up to the root
 * still runs on every relative path (it counts the base's depth, and it is what finds
 * the top dentries, so a moved directory is seen at once); only names are skipped.
 *
 * What could make an entry wrong: a top directory renamed in place to a name with the
 * same length and the same 32-bit dcache hash (d_name.hash_len is read before the
 * name, so a rename racing the fill leaves an entry that no longer matches). A freed
 * dentry whose memory holds a new one matches only with the same hash_len under the
 * same prefix: the same name, hence the same class. Bounded: 64 entries per CPU,
 * direct-mapped, overwritten on collision; a check word catches an entry torn by a
 * program preempted on the same CPU (syscall tracepoints may be preempted). */
struct hs_top_ent {
	__u64 prev;     /* stack[k-1]: the seed and the components above */
	__u64 dentry;
	__u64 hash_len; /* the dentry's d_name.hash_len when the name was read */
	__u64 out;      /* stack[k] */
	__u64 chk;
};

#define HS_TOPS 64

struct hs_tops {
	struct hs_top_ent e[HS_TOPS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hs_tops);
} hs_top_cache SEC(".maps");

static __always_inline __u64 top_chk(__u64 prev, __u64 dentry, __u64 hl, __u64 out)
{
	return ((prev ^ out) + (dentry ^ hl) * FNV_PRIME) * 0x9e3779b97f4a7c15ULL;
}

static __always_inline __u32 top_slot(__u64 prev, __u64 dentry)
{
	return (((prev ^ dentry) * 0x9e3779b97f4a7c15ULL) >> 58) & (HS_TOPS - 1);
}

/* Walking up from a base directory to the root, as d_path does: a mount's root steps
 * to its mountpoint in the parent mount; the root of the root mount ends the walk. */
#define HS_SEEN_MASK 7 /* the ring of the last dentries walked: at least HS_MAX_DEPTH */

struct dir_walk {
	__u64 seen[HS_SEEN_MASK + 1]; /* seen[k & mask]: the k-th dentry walked (from the base) */
	__u64 hl[HS_SEEN_MASK + 1];   /* the names' hash_len, top first, as they were read */
	__u64 *h;                     /* the path_walk's stack: stack[k] from the cache */
	struct dentry___hs *d;
	struct mount___hs *m;
	struct dentry___hs *mroot;
	struct hs_class_event *s; /* the scratch: the top names go to s->base */
	struct hs_tops *tops;
	__u32 n;    /* components walked */
	__u32 done; /* reached the root */
	__u32 off;  /* bytes of s->base filled */
	__u32 bad;  /* a top name could not be read, or they are too long; or a cache miss */
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

		pm = m->mnt_parent;
		if (!pm || pm == m) {
			w->done = 1;
			return 1;
		}
		w->d = m->mnt_mountpoint;
		w->m = pm;
		w->mroot = pm->mnt.mnt_root;
		return 0;
	}
	parent = d->d_parent;
	if (!parent || parent == d) {
		/* The root of a file system that is not a mount's root (a detached one):
		 * no path from the root; not resolved. */
		return 1;
	}
	w->seen[w->n & HS_SEEN_MASK] = (__u64)d;
	w->n++;
	w->d = parent;
	return 0;
}

/* The k-th top component (root first) from the cache: h[k + 1], or a miss. */
static long top_probe(__u64 k, void *ctx)
{
	struct dir_walk *w = ctx;
	__u64 dp = w->seen[(w->n - 1 - k) & HS_SEEN_MASK];
	struct dentry___hs *d = bpf_core_cast((void *)dp, struct dentry___hs);
	__u64 prev = w->h[k & HS_STACK_MASK], hl = d->d_name.hash_len, out;
	struct hs_top_ent *e = &w->tops->e[top_slot(prev, dp)];

	if (e->dentry != dp || e->prev != prev || e->hash_len != hl) {
		w->bad = 1;
		return 1;
	}
	out = e->out;
	if (e->chk != top_chk(prev, dp, hl, out)) {
		w->bad = 1;
		return 1;
	}
	w->h[(k + 1) & HS_STACK_MASK] = out;
	return 0;
}

/* One of the base's top components into s->base, root first. */
static long name_step(__u64 k, void *ctx)
{
	struct dir_walk *c = ctx;
	struct dentry___hs *d =
		bpf_core_cast((void *)c->seen[(c->n - 1 - k) & HS_SEEN_MASK], struct dentry___hs);
	__u64 hl = d->d_name.hash_len; /* before the name: see hs_top_ent */
	const unsigned char *name = d->d_name.name;
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
	c->hl[k & HS_SEEN_MASK] = hl;
	return 0;
}

/* hs_rel_hash's argument: read the base's names even when cached (an event needs
 * them). */
#define HS_REL_NAMES (1ULL << 48)
/* hs_class_event.pad2 in the scratch: a resolved path's base names were not read
 * (cached); pad3 then holds the dirfd to read them again for an event. */
#define HS_BASE_UNREAD 2

/* The class hash of the relative path in the scratch event's data (s->len bytes)
 * resolved against its base directory: the cwd (dirfd AT_FDCWD) or the dirfd's file.
 * `arg`: dirfd (low 32 bits, signed) | seed flags << 32 | HS_REL_NAMES. Returns 0
 * when the base cannot be found (no such fd, a base deeper than HS_WALK_MAX, a
 * detached tree, a top component too long): the caller keeps the `rel:` class. On
 * success the event carries the base (HS_PATH_RESOLVED), so the daemon names the
 * resolved path: its names are in s->base unless they came from the cache
 * (HS_BASE_UNREAD), when an event must call again with HS_REL_NAMES.
 *
 * Only the top hs_path_depth components of the base can make the class: `..` in the
 * relative part pops the base lexically (the core's resolve), and a pop only needs
 * the count of the components below, not their names. So the walk up keeps the
 * dentries of the last hs_path_depth steps (the top ones come last) and their names
 * alone are hashed (or found in hs_top_cache). A global function: verified once on
 * its own. */
__attribute__((noinline)) __u64 hs_rel_hash(__u64 arg)
{
	struct task_struct___hs *task = (void *)bpf_get_current_task_btf();
	__s32 dirfd = (__s32)arg;
	__u32 zero = 0, kept, base_len, k;
	struct hs_class_event *s;
	struct vfsmount___hs *mnt;
	struct dentry___hs *dentry;
	struct dir_walk w = {};
	struct path_walk p = {};
	__u32 dirs;

	s = bpf_map_lookup_elem(&hs_arg_scratch, &zero);
	w.tops = bpf_map_lookup_elem(&hs_top_cache, &zero);
	if (!s || !w.tops)
		return 0;
	if (dirfd == HS_AT_FDCWD) {
		struct fs_struct___hs *fs = task->fs;

		if (!fs)
			return 0;
		mnt = fs->pwd.mnt;
		dentry = fs->pwd.dentry;
	} else {
		struct files_struct___hs *files = task->files;
		struct fdtable___hs *fdt = files ? files->fdt : NULL;
		struct file___hs **fds, *fp = NULL, *f;

		if (dirfd < 0 || !fdt || (__u32)dirfd >= fdt->max_fds)
			return 0;
		fds = BPF_CORE_READ(fdt, fd);
		if (bpf_probe_read_kernel(&fp, sizeof(fp), &fds[dirfd]) || !fp)
			return 0;
		/* An untyped pointer read from the table: typed again for direct loads. */
		f = bpf_core_cast(fp, struct file___hs);
		mnt = f->f_path.mnt;
		dentry = f->f_path.dentry;
	}
	if (!mnt || !dentry)
		return 0;
	w.d = dentry;
	w.m = bpf_core_cast((char *)mnt - bpf_core_field_offset(struct mount___hs, mnt),
			    struct mount___hs);
	w.mroot = mnt->mnt_root;
	bpf_loop(HS_WALK_MAX, dir_step, &w, 0);
	if (!w.done)
		return 0;

	p.depth = hs_path_depth > HS_MAX_DEPTH ? HS_MAX_DEPTH : hs_path_depth;
	kept = w.n < p.depth ? w.n : p.depth;
	w.s = s;
	p.stack[0] = MIX(MIX(MIX(FNV_OFFSET, HS_ARG_PATH), arg >> 32), '/');
	w.h = p.stack;
	if (kept && !(arg & HS_REL_NAMES))
		bpf_loop(kept, top_probe, &w, 0);
	if (kept && (w.bad || (arg & HS_REL_NAMES))) {
		/* Read the names and hash them as a path, then cache each level. */
		w.bad = 0;
		w.off = 0;
		bpf_loop(kept, name_step, &w, 0);
		if (w.bad)
			return 0;
		base_len = w.off;
		s->base[base_len & (HS_BASE_BYTES - 1)] = 0;
		p.s = s;
		p.abs = 1;
		p.in_base = 1;
		p.len = base_len + 1;
		bpf_loop(HS_BASE_BYTES + 1, path_byte, &p, 0);
#pragma unroll
		for (k = 0; k < HS_MAX_DEPTH; k++) {
			__u64 dp = w.seen[(w.n - 1 - k) & HS_SEEN_MASK];
			__u64 prev = p.stack[k], out = p.stack[k + 1], hl = w.hl[k];
			struct hs_top_ent *e;

			if (k >= kept)
				break;
			e = &w.tops->e[top_slot(prev, dp)];
			e->dentry = 0; /* a preempting reader sees a miss meanwhile */
			barrier();
			e->prev = prev;
			e->hash_len = hl;
			e->out = out;
			e->chk = top_chk(prev, dp, hl, out);
			barrier();
			e->dentry = dp;
		}
		s->pad2 = 0;
	} else {
		/* All from the cache (or the base is the root): names unread. */
		s->base[0] = 0;
		s->pad2 = kept ? HS_BASE_UNREAD : 0;
		s->pad3 = (__u32)dirfd;
	}

	/* The relative path on top of the base's components. */
	p.s = s;
	p.abs = 1;
	p.n = w.n; /* the unread deeper components: counted, never part of the class */
	p.in_base = 0;
	p.clen = 0;
	p.off = 0;
	p.pos = 0;
	p.len = s->len;
	bpf_loop(HS_ARG_BYTES + 1, path_run, &p, 0);
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
				      struct hs_class_event *s)
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
		s->arg_flags = pid == 0		  ? 1
			       : pid == -1	  ? 2
			       : pid < -1	  ? 3
			       : (__u32)pid == bpf_get_current_pid_tgid() >> 32 ? 0
						  : 4;
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
				       __u32 kind, __u32 nr, struct hs_task *t, __u64 h)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	fill(&s->ev, kind, pid_tgid >> 32, (__u32)pid_tgid, nr, &t->key, 0, t->lfc, 0);
	s->hash = h;
	s->pad2 = 0;
	s->pad3 = 0;
	if (bpf_ringbuf_output(&hs_events, s, sizeof(*s), wakeup_flags(cfg)))
		acount(HS_ASTAT_LOST);
}

/* Classes found in hs_classes, cached per CPU: a call of interest is most often of a
 * class its profile knows (find opens every directory of /usr/share in the class
 * /usr/share/), and the hash map's lookup (hashing a 16-byte key, a bucket and an
 * element, cold cache lines on a busy machine) was a large part of its price. An
 * entry is (the task's generation, profile slot, call) and the class hash; only
 * found classes are cached. A class leaves hs_classes only when its profile is
 * removed, which moves the generation before the classes are cleared, and a profile
 * made in the freed slot later has a newer generation still: an entry of an older
 * generation never matches. 64 entries per CPU, direct-mapped; a check word catches
 * an entry torn by a preempted program. */
struct hs_known_ent {
	__u64 tag; /* gen << 32 | 1 << 31 | slot << 10 | call */
	__u64 hash;
	__u64 chk;
};

#define HS_KNOWN 64

struct hs_known {
	struct hs_known_ent e[HS_KNOWN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hs_known);
} hs_known_cache SEC(".maps");

static __always_inline __u64 known_chk(__u64 tag, __u64 h)
{
	return (tag * FNV_PRIME ^ h) * 0x9e3779b97f4a7c15ULL;
}

static __always_inline struct hs_known_ent *known_ent(struct hs_known *kc, __u64 tag, __u64 h)
{
	return &kc->e[(((tag ^ h) * 0x9e3779b97f4a7c15ULL) >> 58) & (HS_KNOWN - 1)];
}

/* Learns (training) or tests (normal) class `h` of call `cur`, whose argument is in
 * the scratch event `s`: returns bit 0 set when a normal profile never saw it (a miss,
 * for the locality frame), bit 1 set when a class was learnt (counted like a new pair). */
static __always_inline __u32 class_test(struct hs_config *cfg, struct hs_task *t,
					struct hs_class_event *s, __u32 cur, bool training,
					__u64 h)
{
	struct hs_class_key k = { .slot = t->slot, .call = cur, .pad = 0, .hash = h };
	__u64 tag = (__u64)t->gen << 32 | 1ULL << 31 | (__u64)(t->slot & 0xfffff) << 10 |
		    (cur & 1023);
	struct hs_known *kc = bpf_map_lookup_elem(&hs_known_cache, &k.pad);
	struct hs_known_ent *e = NULL;
	__u32 one = 1, *count;
	long err;

	if (kc) {
		e = known_ent(kc, tag, h);
		if (e->tag == tag && e->hash == h && e->chk == known_chk(tag, h))
			return 0;
	}
	if (bpf_map_lookup_elem(&hs_classes, &k)) {
		if (e) {
			e->tag = 0; /* a preempting reader sees a miss meanwhile */
			barrier();
			e->hash = h;
			e->chk = known_chk(tag, h);
			barrier();
			e->tag = tag;
		}
		return 0;
	}
	if (s->pad2 & HS_BASE_UNREAD) {
		/* A class to learn or report, and the base's names came from the cache:
		 * the event needs them. Read again (a rename meanwhile may move the hash). */
		h = hs_rel_hash((__u64)(s->arg_flags & 3) << 32 | s->pad3 | HS_REL_NAMES);
		if (!h) {
			acount(HS_ASTAT_UNREAD);
			return 0;
		}
		if (h == HS_CLASS_OTHER)
			h = 1;
		if (h != k.hash) {
			k.hash = h;
			if (bpf_map_lookup_elem(&hs_classes, &k))
				return 0;
		}
	}
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
		emit_class(cfg, s, HS_EV_UNSEEN_CLASS, cur, t, h);
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
	emit_class(cfg, s, HS_EV_NEW_CLASS, cur, t, h);
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
	/* Packed: spec << 32 | training << 16 | cur. The config is fetched here, not
	 * passed, and the caller's ids only for an event or a signal's target. */
	struct hs_config *cfg = get_config();
	__u32 cur = call & 0xffff, spec = call >> 32;
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
	h = arg_read(task, spec, s);
	if (h)
		return class_test(cfg, t, s, cur, training, h);
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
	t = task_get(task);
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
	s->pad2 = 0;
	s->arg_kind = HS_ARG_PATH;
	s->arg_flags = pd->flags;
	s->base_dirs = 0;
	s->base[0] = 0;
	h = 0;
	if (s->data[0] != '/')
		h = hs_rel_hash((__u64)s->arg_flags << 32 | (__u32)dfd);
	if (!h)
		h = path_hash(s, 0, n, MIX(MIX(FNV_OFFSET, HS_ARG_PATH), s->arg_flags));
	r = class_test(cfg, t, s, call, training, h == HS_CLASS_OTHER ? 1 : h);
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

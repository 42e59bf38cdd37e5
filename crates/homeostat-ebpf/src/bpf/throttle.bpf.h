/* Williamson's connection throttle in the kernel: `homeostat daemon --throttle-connect`
 * (docs/daemon.md, "Connection throttle"). Included by homeostat.bpf.c, whose
 * sys_enter calls hs_throttle() for the calls of hs_thr_call only; with the throttle
 * off (hs_thr_on == 0, read-only data) the verifier removes the hook, so the daemon
 * without it pays nothing, and with it a call that is not a connect pays one load.
 *
 * What is decided here is only the fast path: a connect to a host of its profile's
 * working set (hs_thr_hosts, filled by userspace as the rule releases hosts) passes
 * after one lookup. A connect to any other IP host is reported (and, in enforce mode,
 * its process is stopped with the pH response's respond_stop): the rule itself, the
 * queue released at the configured rate, is homeostat_monitor::throttle::Throttle in
 * userspace, the one `homeostat run` applies, and the response thread holds the
 * connects of a process it has taken over.
 *
 * hs_throttle is a global function: the verifier checks it once on its own, so the
 * budget of sys_enter does not grow with it (an inlined hook made it exceed E2BIG). */
#ifndef __HOMEOSTAT_THROTTLE_H__
#define __HOMEOSTAT_THROTTLE_H__

/* Loader-set, read-only once loaded. */
const volatile __u32 hs_thr_on = 0;
/* The flags of a profile userspace has not set yet (a profile auto-created at an exec
 * whose event the daemon has not read): the host's mode. */
const volatile __u32 hs_thr_default = 0;
/* Per call, as the tables' `cur` (x86_64 calls, then HS_COMPAT + i386 calls): non-zero
 * for the calls hs_throttle looks at (HS_TC_*), built by the loader from the core's
 * rules (opens_connection, rate::kind_of) for both ABIs, so that neither the
 * throttle nor the rate limits can be passed by making a call the 32-bit way. */
const volatile __u8 hs_thr_call[HS_TABLE] = {};
/* Rate limits (`--rate-limit`): the flags of a profile userspace has not set yet. */
const volatile __u32 hs_rate_default = 0;

#define HS_TC_CONNECT 1 /* the connection throttle's call */
#define HS_TC_FORK 2    /* counts as a fork */
#define HS_TC_CREATE 4  /* counts as a file creation ... */
#define HS_TC_IFCREAT 8 /* ... only with O_CREAT in the flags, whose register is in bits 4-6 */
#define HS_TC_FASTOPEN 128 /* with HS_TC_CONNECT: sendto, a connect only with MSG_FASTOPEN */
#define HS_TC_MSG 64       /* with HS_TC_FASTOPEN: sendmsg, the address in its msghdr */
#define HS_MSG_FASTOPEN 0x20000000

/* The i386 calls that may open a connection (as HS_COMPAT + their number; the loader
 * marks them HS_TC_CONNECT): a 32-bit program's, or a 64-bit one's through int 0x80
 * (TS_COMPAT). socketcall(call, args) passes a socket call's arguments as 32-bit
 * words in memory. */
#define HS_I386_SOCKETCALL 102
#define HS_I386_CONNECT 362
#define HS_I386_SENDTO 369
#define HS_I386_SENDMSG 370
#define HS_SYS_CONNECT 3 /* socketcall's calls */
#define HS_SYS_SENDTO 11
#define HS_SYS_SENDMSG 16

/* A msghdr's first fields, which say where the address of a sendmsg is: x86_64's
 * (msg_name a pointer) and i386's (two 32-bit words). */
struct hs_msghdr {
	__u64 name;
	__u32 namelen;
	__u32 pad;
};
struct hs_msghdr32 {
	__u32 name;
	__u32 namelen;
};

/* The i386 registers of a call: ebx, ecx, edx, esi, edi, ebp hold its arguments. */
struct pt_regs___hs32 {
	unsigned long bx;
	unsigned long cx;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long bp;
} __attribute__((preserve_access_index));

#define HS_THR_CONNECT 1 /* report connects to hosts outside the working set */
#define HS_THR_STOP 2    /* ... and stop the process for the response (enforce) */

/* event.kind: a connect to a host outside its profile's working set; flags & 1: the
 * process was stopped (HS_EVF_STOPPED). */
#define HS_EV_THROTTLE 7

/* hs_thr_stats indices (per-CPU) */
#define HS_TSTAT_UNREAD 0 /* a connect's address not readable: not throttled */
#define HS_TSTAT_LOST 1   /* throttle event dropped (ring buffer full) */
#define HS_TNSTATS 2

/* Rate limits: per profile and kind (fork 0, create 1), the times of the last
 * HS_RATE_RING counted calls; a profile's limit is checked in the kernel only up to
 * that many calls per window. */
#define HS_RATE_RING 128
#define HS_RATE_LEARN 1 /* report each counted call (training: userspace learns peaks) */
#define HS_RATE_CHECK 2 /* report a call beyond the limit */
#define HS_RATE_STOP 4  /* ... and stop the process for the response (enforce) */
#define HS_EV_RATE_CALL 8 /* a counted call (ktime, kind) */
#define HS_EV_RATE_OVER 9 /* a call beyond its profile's limit; flags & 1: stopped */

struct hs_rate_cfg {
	struct hs_key key; /* whose: another profile's slot reads as unset */
	__u32 flags;       /* HS_RATE_* */
	__u32 set;
	__u32 limit[2];    /* calls per window (0: none), by kind */
	__u64 window_ns;
};

struct hs_rate_ring {
	__u32 head; /* the next entry written */
	__u32 pad;
	__u64 ts[HS_RATE_RING];
};

struct hs_rate_event {
	struct hs_event ev; /* kind HS_EV_RATE_*; nr: the call */
	__u64 ktime;
	__u32 rkind;        /* 0 fork, 1 create */
	__u32 limit;        /* HS_EV_RATE_OVER: the limit passed */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HS_SLOTS);
	__type(key, __u32);
	__type(value, struct hs_rate_cfg);
} hs_rate_cfg SEC(".maps");

/* By slot * 2 + kind; written by the programs only (userspace reads a ring when it
 * takes a process over, so that the rule knows the calls that ran meanwhile). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HS_SLOTS * 2);
	__type(key, __u32);
	__type(value, struct hs_rate_ring);
} hs_rate_ring SEC(".maps");

struct hs_rate_event hs_abi_rate_event;

/* Bytes of a socket address read: sizeof(struct sockaddr_in6). */
#define HS_THR_SA 28

/* A profile's throttle flags, by profile slot. `key` says whose: a slot given to
 * another profile since (the first one removed) reads as unset, so a removed
 * profile's flags never apply to its successor. */
struct hs_thr_mode {
	struct hs_key key;
	__u32 flags; /* HS_THR_*; 0 with set == 0: the default */
	__u32 set;
};

/* A host of a profile's working set: its IPv4 (alen 4) or IPv6 (alen 16) address, as
 * homeostat_core::symbols::sockaddr takes it from the socket address. */
struct hs_thr_key {
	struct hs_key key;
	__u8 addr[16];
	__u32 alen;
	__u32 pad;
};

struct hs_thr_event {
	struct hs_event ev; /* kind HS_EV_THROTTLE; nr: the call */
	__u32 len;          /* bytes of sa read */
	__u32 pad;
	__u8 sa[32];        /* the socket address's first bytes */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HS_SLOTS);
	__type(key, __u32);
	__type(value, struct hs_thr_mode);
} hs_thr_mode SEC(".maps");

/* Working sets of all profiles (userspace keeps each at the configured size); the
 * value is the last time a connect used the host (bpf_ktime_get_ns), which userspace
 * reads to replace the least recently used host, as the rule does. LRU only as a
 * bound: an entry lost to it makes its host queue again (a delay, never a pass). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct hs_thr_key);
	__type(value, __u64);
} hs_thr_hosts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HS_TNSTATS);
	__type(key, __u32);
	__type(value, __u64);
} hs_thr_stats SEC(".maps");

/* Never used: makes libbpf-cargo generate the types. */
struct hs_thr_event hs_abi_thr_event;
struct hs_thr_key hs_abi_thr_key;

/* The call's user registers: args.bpf.h's CO-RE flavour of pt_regs (included first). */
static __always_inline void tcount(__u32 which)
{
	percpu_add(&hs_thr_stats, which);
}

/* The start of an event of hs_rate or hs_throttle (`size` bytes, an hs_event first)
 * about call `cur` of the current task: who made it and, when `stop` (enforce mode),
 * the process stopped for the response first (HS_EVF_STOPPED in its flags). NULL when
 * the config cannot be read or the ring is full (counted). */
static __always_inline struct hs_event *thr_event(struct hs_task *t, struct task_struct *task,
						  __u32 kind, __u32 cur, bool stop, __u64 size)
{
	__u32 tid, pid, evf = 0;
	struct hs_event *e;

	if (!caller(&pid, &tid))
		return NULL;
	if (stop && respond_stop(task, pid, tid, cur))
		evf = HS_EVF_STOPPED;
	e = bpf_ringbuf_reserve(&hs_events, size, 0);
	if (!e) {
		tcount(HS_TSTAT_LOST);
		return NULL;
	}
	fill(e, kind, pid, tid, cur, &t->key, 0, t->lfc, evf);
	return e;
}

/* Submits an event of thr_event: a stop must reach userspace now (the process waits
 * for it), the others are batched. */
static __always_inline void thr_submit(void *e)
{
	struct hs_config *cfg = get_config();

	bpf_ringbuf_submit(e, ((((struct hs_event *)e)->flags & HS_EVF_STOPPED) || !cfg) ?
				      BPF_RB_FORCE_WAKEUP :
				      wakeup_flags(cfg));
}

/* A fork or file creation (rate limits): counted in its profile's ring; reported in
 * training (the peaks are learnt in userspace, with the core's meter) and beyond the
 * limit once normal, when it also stops the process in enforce mode. */
__attribute__((noinline)) __u32 hs_rate(struct hs_task *t, __u32 cur, __u32 spec)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct hs_rate_cfg *c;
	struct hs_rate_ring *ring;
	struct hs_rate_event *e;
	__u32 slot, flags, kind, idx, limit = 0, h;
	__u64 now, window = 0, prev;
	bool over = false;

	if (!t)
		return 0;
	kind = (spec & HS_TC_FORK) ? 0 : 1;
	if (spec & HS_TC_IFCREAT) {
		struct pt_regs___hs *r = (struct pt_regs___hs *)bpf_task_pt_regs(task);
		struct pt_regs___hs32 *r32 = (struct pt_regs___hs32 *)r;
		__u64 oflags;

		/* The flags' argument, in its ABI's register (i386's open and openat take
		 * theirs in x86_64's order; O_CREAT is the same bit on both). */
		if (cur >= HS_ROW) {
			switch ((spec >> 4) & 7) {
			case 0: oflags = BPF_CORE_READ(r32, bx); break;
			case 1: oflags = BPF_CORE_READ(r32, cx); break;
			case 2: oflags = BPF_CORE_READ(r32, dx); break;
			default: oflags = BPF_CORE_READ(r32, si); break;
			}
		} else {
			switch ((spec >> 4) & 7) {
			case 0: oflags = BPF_CORE_READ(r, di); break;
			case 1: oflags = BPF_CORE_READ(r, si); break;
			case 2: oflags = BPF_CORE_READ(r, dx); break;
			default: oflags = BPF_CORE_READ(r, r10); break;
			}
		}
		if (!(oflags & 0100 /* O_CREAT */))
			return 0;
	}
	slot = t->slot;
	c = bpf_map_lookup_elem(&hs_rate_cfg, &slot);
	if (c && c->set && c->key.dev == t->key.dev && c->key.ino == t->key.ino) {
		flags = c->flags;
		limit = c->limit[kind & 1];
		window = c->window_ns;
	} else {
		flags = hs_rate_default;
	}
	if (!flags)
		return 0;
	idx = slot * 2 + kind;
	ring = bpf_map_lookup_elem(&hs_rate_ring, &idx);
	if (!ring)
		return 0;
	now = bpf_ktime_get_ns();
	if ((flags & HS_RATE_CHECK) && limit && limit <= HS_RATE_RING) {
		/* Beyond the limit: the limit-th most recent call is inside the window. */
		prev = ring->ts[(ring->head - limit) & (HS_RATE_RING - 1)];
		over = prev && prev + window > now;
	}
	h = __sync_fetch_and_add(&ring->head, 1);
	ring->ts[h & (HS_RATE_RING - 1)] = now;
	if (!(flags & HS_RATE_LEARN) && !over)
		return 0;
	e = (struct hs_rate_event *)thr_event(t, task, over ? HS_EV_RATE_OVER : HS_EV_RATE_CALL, cur,
					      over && (flags & HS_RATE_STOP), sizeof(*e));
	if (!e)
		return 0;
	e->ktime = now;
	e->rkind = kind;
	e->limit = limit;
	thr_submit(e);
	return 0;
}

/* The throttle's look at call `cur` of the task `t` (a connect), or the rate limits'
 * (a fork or file creation). Global: see above. */
__attribute__((noinline)) __u32 hs_throttle(struct hs_task *t, __u32 cur)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs___hs *r;
	struct hs_thr_key k = {};
	struct hs_thr_mode *m;
	struct hs_thr_event *e;
	__u8 sa[HS_THR_SA] = {};
	__u64 addr, len, *last;
	__u32 slot, flags, n;
	__u8 spec = hs_thr_call[cur & (HS_TABLE - 1)];
	__u16 fam;

	if (!t || !spec)
		return 0;
	if (!(spec & HS_TC_CONNECT))
		return hs_rate(t, cur, spec);
	slot = t->slot;
	m = bpf_map_lookup_elem(&hs_thr_mode, &slot);
	flags = (m && m->set && m->key.dev == t->key.dev && m->key.ino == t->key.ino) ?
			m->flags : hs_thr_default;
	if (!(flags & HS_THR_CONNECT))
		return 0;
	r = (struct pt_regs___hs *)bpf_task_pt_regs(task);
	if (cur >= HS_ROW) {
		struct pt_regs___hs32 *r32 = (struct pt_regs___hs32 *)r;
		__u32 w[6] = {};

		struct hs_msghdr32 mh = {};
		__u64 msg;

		if (cur == HS_COMPAT + HS_I386_SOCKETCALL) {
			__u32 call = BPF_CORE_READ(r32, bx);
			__u64 args = BPF_CORE_READ(r32, cx) & 0xffffffff;

			if (call != HS_SYS_CONNECT && call != HS_SYS_SENDTO && call != HS_SYS_SENDMSG)
				return 0;
			if (bpf_probe_read_user(w, call == HS_SYS_SENDTO ? 24 : 12, (void *)args)) {
				/* Not resident: as an unreadable address below. */
				addr = 0;
				len = 0;
				goto unread;
			}
			if (call == HS_SYS_SENDTO && !(w[3] & HS_MSG_FASTOPEN))
				return 0;
			if (call == HS_SYS_SENDMSG) {
				if (!(w[2] & HS_MSG_FASTOPEN))
					return 0;
				msg = w[1];
				goto msghdr32;
			}
			addr = call == HS_SYS_CONNECT ? w[1] : w[4];
			len = call == HS_SYS_CONNECT ? w[2] : w[5];
		} else if (cur == HS_COMPAT + HS_I386_SENDMSG) {
			if (!(BPF_CORE_READ(r32, dx) & HS_MSG_FASTOPEN))
				return 0;
			msg = BPF_CORE_READ(r32, cx) & 0xffffffff;
msghdr32:
			/* TCP Fast Open by sendmsg: the address is the msghdr's. */
			if (bpf_probe_read_user(&mh, sizeof(mh), (void *)msg)) {
				addr = 0;
				len = 0;
				goto unread;
			}
			addr = mh.name;
			len = mh.namelen;
		} else if (cur == HS_COMPAT + HS_I386_CONNECT) {
			addr = BPF_CORE_READ(r32, cx) & 0xffffffff;
			len = BPF_CORE_READ(r32, dx) & 0xffffffff;
		} else {
			if (!(BPF_CORE_READ(r32, si) & HS_MSG_FASTOPEN))
				return 0;
			addr = BPF_CORE_READ(r32, di) & 0xffffffff;
			len = BPF_CORE_READ(r32, bp) & 0xffffffff;
		}
	} else if (spec & HS_TC_MSG) {
		/* sendmsg(fd, msg, flags) with MSG_FASTOPEN: the msghdr's address. */
		struct hs_msghdr mh = {};

		if (!(BPF_CORE_READ(r, dx) & HS_MSG_FASTOPEN))
			return 0;
		if (bpf_probe_read_user(&mh, sizeof(mh), (void *)BPF_CORE_READ(r, si))) {
			addr = 0;
			len = 0;
			goto unread;
		}
		addr = mh.name;
		len = mh.namelen;
	} else if (spec & HS_TC_FASTOPEN) {
		/* TCP Fast Open: sendto(fd, buf, n, flags, addr, len) opens a connection
		 * with no connect. */
		if (!(BPF_CORE_READ(r, r10) & HS_MSG_FASTOPEN))
			return 0;
		addr = BPF_CORE_READ(r, r8);
		len = BPF_CORE_READ(r, r9);
	} else {
		addr = BPF_CORE_READ(r, si);
		len = BPF_CORE_READ(r, dx);
	}
	if (!addr || len < 8)
		return 0;
	n = len < HS_THR_SA ? len : HS_THR_SA;
	if (bpf_probe_read_user(sa, n & 31, (void *)addr)) {
		/* Not resident (a page not faulted in yet): the call itself will fault it
		 * in, this program cannot. A scanner could put every address there, so it
		 * is a new host of unknown address (len 0): reported and, in enforce mode,
		 * stopped; the response thread reads the next ones at their entry. (So is
		 * an i386 socketcall whose argument words are not resident.) */
unread:
		tcount(HS_TSTAT_UNREAD);
		__builtin_memset(sa, 0, HS_THR_SA);
		n = 0;
	} else {
		fam = sa[0] | (__u16)sa[1] << 8;
		if (fam == 2 /* AF_INET */) {
			__builtin_memcpy(k.addr, sa + 4, 4);
			k.alen = 4;
		} else if (fam == 10 /* AF_INET6 */ && n >= 24) {
			__builtin_memcpy(k.addr, sa + 8, 16);
			k.alen = 16;
		} else {
			return 0; /* Unix sockets and other families are never throttled */
		}
		k.key = t->key;
		last = bpf_map_lookup_elem(&hs_thr_hosts, &k);
		if (last) {
			*last = bpf_ktime_get_ns();
			return 0;
		}
	}
	e = (struct hs_thr_event *)thr_event(t, task, HS_EV_THROTTLE, cur, flags & HS_THR_STOP,
					     sizeof(*e));
	if (!e)
		return 0;
	e->len = n;
	e->pad = 0;
	__builtin_memcpy(e->sa, sa, HS_THR_SA);
	__builtin_memset(e->sa + HS_THR_SA, 0, sizeof(e->sa) - HS_THR_SA);
	thr_submit(e);
	return 0;
}

#endif

// SPDX-License-Identifier: GPL-2.0
/* homeostat's kernel side: pH's per-call work, done where the call happens.
 *
 * Per task (keyed by its kernel stack, hs_tids): the executable's profile key, the last 8 calls and the
 * locality frame (last 128 calls, 1 bit each, plus the count). Per executable
 * (keyed by dev, ino): the state (training or normal) and counters. Per
 * (executable, current call): one row of pH's table, a distance mask per previous
 * call, bit d-1 set when "prev d calls before cur" was seen. A row per current call
 * makes the test one map lookup and eight byte loads, as in pH (eight lookups, one
 * per (cur, prev) key, made tracing 2x dearer).
 *
 * On each sys_enter of a task whose executable has a profile: a training profile
 * learns the missing pairs here (as ebpH does) and reports "new pairs"; a normal one
 * tests them, updates the task's locality frame and reports anomalies. Only events
 * cross to userspace, so the common call costs a few map lookups and no wakeup
 * (measured: per-call ring-buffer events cost 3-9x, per-task state in kernel ~1.0x).
 *
 * GPL because bpf_probe_read_kernel (BPF_CORE_READ) is a GPL-only helper.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "homeostat.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hs_config);
} hs_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct hs_key);
	__type(value, struct hs_profile);
} hs_profiles SEC(".maps");

/* Tasks' state, by the address of their user registers (struct hs_tid, slot_at): one
 * of the two slots its key may hold (slot_other), the task's own while its owner word
 * is that key. An array
 * lookup the verifier inlines as an address computation, where task storage (below)
 * is a helper call and three dependent loads (task->bpf_storage, the storage's cache
 * slot, the element): about half of what the common call cost over the hook's own
 * price (docs/ebpf.md, "The tid array"); keyed by the registers rather than the tid
 * since the thirteenth session, so the common call needs neither the task nor a
 * per-CPU guess of it to find its slot (docs/ebpf.md, "Slots by kernel stack"). A
 * slot is claimed with compare-and-swap from 0 when a task's state is made (its
 * first call seen, exec, fork: the parent fills the child's), and freed at its exit.
 * Each key has two slots, the one it hashes to and its neighbour (slot_other); a
 * task that finds both held by others keeps its state in task storage. HS_TIDS slots
 * (6 MiB) unless the loader asks for fewer, preallocated.
 * mmappable for the layout, and for userspace to find a tid's slot by reading
 * (hs_task.tid): the kernel then places the values at the start of a page
 * (kernel/bpf/arraymap.c, array_map_alloc), where a plain array's follow struct
 * bpf_array's header at whatever offset it has; with 192-byte values every slot is
 * cache-line aligned (the JIT image's base address of the values ends in 000 on
 * this kernel). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HS_TIDS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct hs_tid);
} hs_tids SEC(".maps");

_Static_assert(sizeof(struct hs_tid) % 64 == 0, "hs_tids slots must be whole cache lines");
_Static_assert(__builtin_offsetof(struct hs_tid, t.known) == 64,
	       "hs_task.known must fill the slot's second cache line");

/* Task-local storage, for tasks both of whose hs_tids slots are others': found from
 * the task pointer without hashing (a tid-keyed LRU hash cost ~0.25x on dd bs=1 for the
 * lookup alone) and freed with the task. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct hs_task);
} hs_tasks SEC(".maps");

/* A forked child's inherited state, by child tid, until its first call, when both of
 * its hs_tids slots are others' (a free one is filled at the fork): the fork
 * tracepoint's child pointer is untyped in a raw tracepoint, so the child's own
 * storage is filled from here when it first runs. LRU: a child that never makes a
 * call ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct hs_task);
} hs_forks SEC(".maps");

/* pH's table, found by array index on the per-call path (a hash lookup keyed by
 * (dev, ino, call) was the largest part of the per-call cost): a profile has a slot
 * for life, its slot's hs_index entry maps each call to a row of the pool hs_rows.
 * Both are arrays, whose lookups the verifier inlines: no hashing, no locks, nothing
 * written on the common call. Preallocated, so bounded and paid at load: 16 MiB of
 * index (4096 x 1024 x 4 B) and 32 MiB of rows (65536 x 512 B). mmappable: userspace
 * sets index entries with compare-and-swap as the programs do. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HS_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct hs_index);
} hs_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HS_ROWS);
	__type(key, __u32);
	__type(value, struct hs_row);
} hs_rows SEC(".maps");

/* Free slots and free rows, filled by userspace at load (slots 0..4095, rows
 * 1..65535); both sides pop to allocate and push to free, atomically. An empty queue
 * is a full map: counted (profiles_full, rows_full). */
struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, HS_SLOTS);
	__type(value, __u32);
} hs_free_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, HS_ROWS);
	__type(value, __u32);
} hs_free_rows SEC(".maps");

/* Processes stopped for a response and not yet taken over by userspace (tgid ->
 * hs_stop). Also the dedup: one stop per process, however many of its threads are
 * anomalous before the stop lands. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct hs_stop);
} hs_stopped SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} hs_events SEC(".maps");

/* Calls of each profile slot's tasks, per CPU: where a task adds its pending calls
 * every HS_FLUSH_CALLS calls, inline on the common call (a per-CPU array's lookup
 * the verifier inlines; a flush through the general path, which looked up the
 * profile by its hash key, cost 3 ns a call on find: 1/64 of the general path).
 * A profile's count is its hs_profile.calls (the flushes at exec and exit, which
 * look the profile up and so need no current slot) plus this entry summed over CPUs
 * (userspace: Kernel::profile). Userspace zeroes a slot's entry when it frees the
 * slot; a task that passed its generation test before the removal can still add up
 * to HS_FLUSH_CALLS calls after the zeroing, which the slot's next profile counts. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HS_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} hs_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HS_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} hs_stats SEC(".maps");

/* The words the common call reads besides its task's state, in one struct so that
 * they share one cache line and one address load (separate globals were a load of
 * an address each). In ".data", a map of its own, so no write elsewhere evicts the
 * line. */
struct hs_shared {
	/* Moved by every change of hs_profiles (atomically: by the programs when
	 * auto_create makes a profile, by userspace through the mmapped map otherwise): a
	 * task's cached profile entry is stale when its generation differs. First: the
	 * loader maps the page and moves this word (src/generation.rs). Starts at 1: a new
	 * state (generation 0) is stale at first. A bump that reaches 0 adds one more at
	 * once (hs_task.fast: 0 is "not ready"), so 0 is seen at most for an instant
	 * every 2^32 bumps. */
	__u32 generation;
	/* hs_tids' size - 1 (set at load). */
	__u32 tid_mask;
};

struct hs_shared hs_shared = { .generation = 1, .tid_mask = HS_TIDS - 1 };
/* Never read or written: a global of the event type makes libbpf-cargo generate its
 * #[repr(C)] Rust type (it generates the types of maps and globals only, and the ring
 * buffer has none), so that the loader decodes events through it. */
struct hs_exec_event hs_abi_exec_event;

/* Adds one to entry `which` of a per-CPU counter array (the loss counters of the
 * pair tables, of the argument classes and of the throttle). */
static __always_inline void percpu_add(void *map, __u32 which)
{
	__u64 *v = bpf_map_lookup_elem(map, &which);

	if (v)
		*v += 1; /* per-CPU: no atomics needed */
}

static __always_inline void count(__u32 which)
{
	percpu_add(&hs_stats, which);
}

/* Adds `n` calls to profile slot `slot`'s count on this CPU (hs_calls). Not inlined:
 * the common call runs it once in HS_FLUSH_CALLS calls. */
static __noinline void calls_add(__u32 slot, __u32 n)
{
	__u64 *v = bpf_map_lookup_elem(&hs_calls, &slot);

	if (v)
		*v += n; /* per-CPU: no atomics needed */
}

static __always_inline struct hs_config *get_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&hs_config, &zero);
}

/* The config and who makes the current call, for code about to report it (NULL: no
 * config, report nothing): the one place the two ids are taken apart. */
static __always_inline struct hs_config *caller(__u32 *pid, __u32 *tid)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	*tid = (__u32)pid_tgid;
	*pid = pid_tgid >> 32;
	return get_config();
}

/* Waking the consumer per event costs a cross-CPU wakeup; batch them. The
 * consumer also drains on a timeout, so a quiet tail is not stranded. */
static __always_inline __u64 wakeup_flags(struct hs_config *cfg)
{
	/* Counted per CPU: a global counter was an atomic add on the cache line every
	 * task read the generation from, on every event of every CPU. */
	__u32 which = HS_STAT_EVENTS;
	__u64 *n = bpf_map_lookup_elem(&hs_stats, &which);
	__u64 every = cfg->wakeup_every ? cfg->wakeup_every : 1;

	if (!n)
		return BPF_RB_FORCE_WAKEUP;
	return ((*n)++ % every == 0) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void fill(struct hs_event *e, __u32 kind, __u32 pid, __u32 tid,
				 __u32 nr, struct hs_key *key, __u32 misses, __u32 lfc, __u32 flags)
{
	e->flags = flags;
	e->igen = 0;
	e->kind = kind;
	e->pid = pid;
	e->tid = tid;
	e->nr = nr;
	e->dev = key->dev;
	e->ino = key->ino;
	e->misses = misses;
	e->lfc = lfc;
}

static __always_inline void emit(struct hs_config *cfg, __u32 kind, __u32 pid, __u32 tid,
				 __u32 nr, struct hs_key *key, __u32 misses, __u32 lfc,
				 __u32 flags)
{
	struct hs_event *e = bpf_ringbuf_reserve(&hs_events, sizeof(*e), 0);

	if (!e) {
		count(HS_STAT_LOST_EVENTS);
		return;
	}
	fill(e, kind, pid, tid, nr, key, misses, lfc, flags);
	/* A stop must reach userspace now: the process waits for it. */
	bpf_ringbuf_submit(e, (flags & HS_EVF_STOPPED) ? BPF_RB_FORCE_WAKEUP : wakeup_flags(cfg));
}

static __always_inline void emit_exec(struct hs_config *cfg, __u32 pid, __u32 tid,
				      struct hs_key *key, __u32 igen, __u32 flags,
				      struct linux_binprm *bprm)
{
	struct hs_exec_event *e = bpf_ringbuf_reserve(&hs_events, sizeof(*e), 0);

	if (!e) {
		count(HS_STAT_LOST_EVENTS);
		return;
	}
	fill(&e->ev, HS_EV_EXEC, pid, tid, 0, key, 0, 0, flags);
	e->ev.igen = igen;
	if (bpf_probe_read_kernel_str(e->path, sizeof(e->path), BPF_CORE_READ(bprm, filename)) < 0)
		e->path[0] = 0;
	if (bpf_probe_read_kernel_str(e->interp, sizeof(e->interp), BPF_CORE_READ(bprm, interp)) < 0)
		e->interp[0] = 0;
	bpf_ringbuf_submit(e, wakeup_flags(cfg));
}

/* The kernel encodes dev_t as major << 20 | minor; stat(2) reports the "new"
 * userspace encoding. Convert so kernel keys equal what userspace stats. */
static __always_inline __u64 user_dev(__u32 kdev)
{
	__u64 major = kdev >> 20, minor = kdev & ((1U << 20) - 1);

	return (minor & 0xff) | (major << 8) | ((minor & ~0xffULL) << 12);
}

/* The first of the two hs_tids slots key `key` (a task's user registers' address,
 * hs_tid) may hold: the address's page number hashed (Fibonacci: kernel stacks lie at
 * strides of their size, which a mask alone would fold onto a few slots). */
static __always_inline __u32 slot_hash(__u64 key)
{
	return (__u32)(((key >> 12) * 0x9e3779b97f4a7c15ULL) >> 32) & hs_shared.tid_mask;
}

/* Slot `i`. NULL only if the mask and the map disagreed. */
static __always_inline struct hs_tid *slot_n(__u32 i)
{
	return bpf_map_lookup_elem(&hs_tids, &i);
}

/* The other slot a key whose first slot is `i` may hold: its neighbour (i ^ 1, the
 * same in either direction). Two ways rather than one: a task finds both held far
 * less often than one (with n tasks in N slots, about 2n^3 / 3N^2 of them in all
 * rather than n^2 / 2N), and a task left out keeps its state in task storage, where
 * each of its calls takes the general path. Only a task in its second slot pays the
 * second look, on the common call's mismatch branch. */
static __always_inline struct hs_tid *slot_other(__u32 i)
{
	return slot_n((i ^ 1) & hs_shared.tid_mask);
}

/* The slot key `key` holds, of its two, or NULL. The common call's lookup too: only a
 * task in its second slot gets past the first test. */
static __always_inline struct hs_tid *slot_at(__u64 key)
{
	__u32 i = slot_hash(key);
	struct hs_tid *s = slot_n(i);

	if (s && s->owner == key)
		return s;
	s = slot_other(i);
	if (s && s->owner == key)
		return s;
	return NULL;
}

/* Claims for key `key` the first free one of its two slots (compare-and-swap from 0),
 * or NULL if both are held. The caller fills it (task_create, the fork hook). */
static __always_inline struct hs_tid *slot_claim(__u64 key)
{
	__u32 i = slot_hash(key), way;
	struct hs_tid *s;

	for (way = 0; way < 2; way++) {
		s = way ? slot_other(i) : slot_n(i);
		if (s && !s->owner && !__sync_val_compare_and_swap(&s->owner, 0, key))
			return s;
	}
	return NULL;
}

/* A task's key (hs_tid.owner) from the address of its user registers, a typed
 * pointer: its distance from hs_shared, a plain number one to one with the address.
 * Why not the address itself: the verifier types it as a pointer, on which it
 * allows adding and subtracting only (the hash shifts and multiplies), but the
 * difference of two pointers is a number to a program that may read kernel
 * addresses, as every tracing program may. */
static __always_inline __u64 regs_key(const struct pt_regs *regs)
{
	return (__u64)regs - (__u64)&hs_shared;
}

/* `task`'s key: where its user registers are, as sys_enter's `regs` (a helper call;
 * the common call has them from its tracepoint). */
static __always_inline __u64 task_key(struct task_struct *task)
{
	return regs_key((const struct pt_regs *)bpf_task_pt_regs(task));
}

/* The state of `task`, whose key is `key`: its hs_tids slot if it owns it, else its
 * task storage, if any. The one place that says where a task's state is; the common
 * call spells the same out inline. */
static __always_inline struct hs_task *task_at(struct task_struct *task, __u64 key)
{
	struct hs_tid *s = slot_at(key);

	if (s)
		return &s->t;
	return bpf_task_storage_get(&hs_tasks, task, 0, 0);
}

static __always_inline struct hs_task *task_get(struct task_struct *task)
{
	return task_at(task, task_key(task));
}

/* The state of `task` (key `key`), made if it has none: the slot it holds, else the
 * first of its two slots that is free, claimed, else task storage (counted:
 * tids_taken). What a made state holds (a slot: a previous task's) is the caller's to
 * overwrite (task_init, or a fork's copy), tid included. A task whose state was in
 * storage moves to a slot when one of its two is free at its next exec. */
static __always_inline struct hs_task *task_create(struct task_struct *task, __u64 key)
{
	struct hs_tid *s = slot_at(key);
	struct hs_task *t;

	if (s) {
		s->task = (__u64)task; /* the same task: kept exact all the same */
		return &s->t;
	}
	s = slot_claim(key);
	if (s) {
		s->task = (__u64)task;
		/* A state the task kept in storage while its slots were held is not its own
		 * any more: userspace, which reads storage for a thread it found in no slot
		 * before, must not take it for the live one. If the delete cannot run now
		 * (-EBUSY: task storage busy on this CPU), the state is marked invalid
		 * instead, if it can be reached. */
		if (bpf_task_storage_delete(&hs_tasks, task) == -16) {
			t = bpf_task_storage_get(&hs_tasks, task, 0, 0);
			if (t)
				t->valid = 0;
		}
		return &s->t;
	}
	count(HS_STAT_TIDS_TAKEN);
	t = bpf_task_storage_get(&hs_tasks, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t)
		count(HS_STAT_TASKS_FULL);
	return t;
}

/* Frees the slot of key `key` if that key owns it (at its task's exit). Only the
 * owner clears an owner word, and claims need it 0: a plain store. */
static __always_inline void slot_release(__u64 key)
{
	struct hs_tid *s = slot_at(key);

	if (s) {
		/* The tid first: userspace, reading the array meanwhile, then never sees
		 * a dead task's tid under a held owner word. */
		s->t.tid = 0;
		s->owner = 0;
	}
}

/* Empties the task's table of known pairs (hs_task.known). Not inlined, as the other
 * rare paths of on_sys_enter (row_new, respond_stop): BPF-to-BPF calls keep them out
 * of the common call's code (measured: 1-3 ns a call less on dd, find and tar). BPF
 * calls take five arguments at most, so task_init and emit stay inline. */
static __noinline void local_reset(struct hs_task *t)
{
	__u64 *tag = (__u64 *)t->ltag;
	int i;

#pragma unroll
	for (i = 0; i < HS_LOCAL; i++)
		t->known[i] = 0;
#pragma unroll
	for (i = 0; i < HS_LOCAL / 4; i++)
		tag[i] = 0xffffffffffffffffULL; /* HS_LOCAL_FREE in every lane */
	t->nlocal = 0;
	t->lvalid = 0;
	t->lwin = 0;
	t->fast = 0;
}

/* The local slot of call `cur` (-1: none): the four lanes of each word of ltag
 * compared at once (a lane equal to cur is a zero lane of w ^ cur x 4, whose bit 15
 * the expression sets; the lowest one is found exactly). */
static __always_inline int local_slot(struct hs_task *t, __u16 cur)
{
	const __u64 ones = 0x0001000100010001ULL, highs = 0x8000800080008000ULL;
	__u64 *tag = (__u64 *)t->ltag, pat = cur * ones, x, z;
	int i;

#pragma unroll
	for (i = 0; i < HS_LOCAL / 4; i++) {
		x = tag[i] ^ pat;
		z = (x - ones) & ~x & highs;
		/* The lowest set bit is bit 15 of lane k; 1 << 16k times a constant with
		 * 3 - j in lane j has k in its top lane: k without a branch. */
		if (z)
			return i * 4 + ((((z & -z) >> 15) * 0x0000000100020003ULL) >> 48);
	}
	return -1;
}

/* Writes seq from the local window: while lvalid is HS_SEQ the common call keeps
 * the window only in lwin (one bit per byte, the slot of the call d back in byte
 * d-1) over ltag, and leaves seq as the last general call wrote it. A one-bit byte
 * 1 << k minus one has k bits set: the eight slots are counted at once (bytes never
 * borrow: each is at least 1). */
static __always_inline void seq_from_local(struct hs_task *t)
{
	__u64 x = t->lwin - 0x0101010101010101ULL, s0, s1;

	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
#define LTAG(d) ((__u64)t->ltag[(x >> (8 * (d))) & (HS_LOCAL - 1)] << (16 * ((d) & 3)))
	s0 = LTAG(0) | LTAG(1) | LTAG(2) | LTAG(3);
	s1 = LTAG(4) | LTAG(5) | LTAG(6) | LTAG(7);
#undef LTAG
	((__u64 *)t->seq)[0] = s0;
	((__u64 *)t->seq)[1] = s1;
}

/* Initialises `task`'s entry (key `key`) for running `file`; creates a training profile when
 * auto_create is on; reports the exec when `bprm` is given. Returns the entry or
 * NULL. */
static __always_inline struct hs_task *task_init(struct hs_config *cfg, struct task_struct *task,
						 __u64 key, __u32 pid, __u32 tid,
						 struct file *file, struct linux_binprm *bprm)
{
	struct hs_task *t;
	struct inode *inode;
	struct hs_profile *old;
	__u32 flags = 0;

	t = task_create(task, key);
	if (!t)
		return NULL;
	t->tid = tid;
	t->valid = 0;
	t->fast = 0; /* a slot holds its previous task's state until here */
	/* The daemon itself, or a task outside its scope: marked once, so that the
	 * common call tests neither (forks inherit the mark; an exec decides again). */
	if (pid == cfg->ignore_tgid ||
	    (cfg->scope_cgroup && bpf_get_current_cgroup_id() != cfg->scope_cgroup)) {
		t->valid = HS_VALID_OUT;
		return NULL;
	}
	if (!file)
		return NULL;
	inode = BPF_CORE_READ(file, f_inode);
	if (!inode)
		return NULL;
	t->key.ino = BPF_CORE_READ(inode, i_ino);
	t->key.dev = user_dev(BPF_CORE_READ(inode, i_sb, s_dev));
	t->igen = BPF_CORE_READ(inode, i_generation);
	t->nseq = 0;
	t->fpos = 0;
	t->lfc = 0;
	t->frame[0] = 0;
	t->frame[1] = 0;
	t->gen = 0;
	t->cached = 0;
	t->pending = 0;
	t->slot = 0;
	local_reset(t);
	t->valid = HS_VALID;
	old = bpf_map_lookup_elem(&hs_profiles, &t->key);
	if (old && old->igen != t->igen) {
		/* A profile loaded without a generation adopts this file's; one made for
		 * another file (the inode number was reused) is not this file's: the task
		 * is not followed (on_sys_enter's refresh checks the same), and the exec
		 * event tells userspace to replace the profile. */
		if (!old->igen)
			__sync_val_compare_and_swap(&old->igen, 0, t->igen);
		else if (t->igen)
			flags = HS_EVF_REPLACED;
	}
	if (cfg->auto_create && !old) {
		struct hs_profile p = { .igen = t->igen };
		long err;

		if (bpf_map_pop_elem(&hs_free_slots, &p.slot)) {
			count(HS_STAT_PROFILES_FULL);
		} else {
			err = bpf_map_update_elem(&hs_profiles, &t->key, &p, BPF_NOEXIST);
			if (!err) {
				/* Never to 0 (hs_task.fast), as userspace's bump. */
				if (__sync_fetch_and_add(&hs_shared.generation, 1) == 0xffffffff)
					__sync_fetch_and_add(&hs_shared.generation, 1);
			} else {
				bpf_map_push_elem(&hs_free_slots, &p.slot, 0);
				if (err != -17 /* EEXIST: another CPU made it */)
					count(HS_STAT_PROFILES_FULL);
			}
		}
	}
	if (bprm)
		emit_exec(cfg, pid, tid, &t->key, t->igen, flags, bprm);
	return t;
}

/* pH's response starts here: a tracepoint cannot sleep or fail the call, so the
 * process is stopped (SIGSTOP, delivered when this call returns to user mode) and
 * userspace takes it over with ptrace to delay its calls and refuse execve. Skipped
 * for a traced process: either it is already under response (the daemon's tracer
 * follows forks, and children inherit the LFC), or a debugger owns it and the daemon
 * could not attach anyway. Returns whether this call stopped the process. */
static __noinline bool respond_stop(struct task_struct *task, __u32 pid, __u32 tid,
					 __u32 nr)
{
	struct hs_stop s = { .ktime_ns = bpf_ktime_get_ns(), .tid = tid, .nr = nr };
	long err;

	if (BPF_CORE_READ(task, ptrace))
		return false;
	err = bpf_map_update_elem(&hs_stopped, &pid, &s, BPF_NOEXIST);
	if (err) {
		/* EEXIST: another thread got here first (one stop per process). */
		if (err != -17)
			count(HS_STAT_STOPS_FAILED);
		return false;
	}
	if (bpf_send_signal(19 /* SIGSTOP */)) {
		bpf_map_delete_elem(&hs_stopped, &pid);
		count(HS_STAT_STOPS_FAILED);
		return false;
	}
	return true;
}

/* Whether the current task is one the profile learns from (its learn filter). */
static __always_inline bool learns_from(struct hs_profile *p)
{
	if ((p->learn_flags & HS_LEARN_UID) && (__u32)bpf_get_current_uid_gid() != p->learn_uid)
		return false;
	if ((p->learn_flags & HS_LEARN_CGROUP) && bpf_get_current_cgroup_id() != p->learn_cgroup)
		return false;
	return true;
}

/* A new, zeroed row for call `cur` of the profile whose index is `ix`; returns its
 * pool index (0: none, the pool is empty or another CPU won; counted if empty). */
static __noinline __u32 row_new(struct hs_index *ix, __u32 cur)
{
	__u32 r, zero = 0, old;
	struct hs_row *row, *z;

	if (bpf_map_pop_elem(&hs_free_rows, &r)) {
		count(HS_STAT_ROWS_FULL);
		return 0;
	}
	row = bpf_map_lookup_elem(&hs_rows, &r);
	z = bpf_map_lookup_elem(&hs_rows, &zero);
	/* A freed row may hold a bit a racing CPU set after it was cleared. */
	if (!row || !z || r == 0 || bpf_probe_read_kernel(row, sizeof(*row), z)) {
		bpf_map_push_elem(&hs_free_rows, &r, 0);
		return 0;
	}
	old = __sync_val_compare_and_swap(&ix->row[cur & (HS_TABLE - 1)], 0, r);
	if (old) {
		/* Another CPU (or userspace) made it first. */
		bpf_map_push_elem(&hs_free_rows, &r, 0);
		return old;
	}
	return r;
}

/* 1 if the pair (cur, the call in bits `sh` of word `w`, distance bit+1) is in `row`. */
#define HIT(w, sh, bit) ((row->mask[((w) >> (sh)) & (HS_ROW - 1)] >> (bit)) & 1)

/* One distance: test (normal) or learn (training) the pair (cur, seq[d-1], d). */
#define PAIR(d)                                                                  \
	if ((d) <= t->nseq) {                                                    \
		__u8 bit = 1 << ((d) - 1);                                       \
		__u32 prev = (((d) <= 4 ? s0 >> (16 * ((d) - 1))                  \
				       : s1 >> (16 * ((d) - 5)))) & (HS_ROW - 1); \
		if (!row || !(row->mask[prev] & bit)) {                          \
			if (!training)                                           \
				misses++;                                        \
			else if (row) {                                          \
				/* a lost race loses a bit: relearnt next time */ \
				row->mask[prev] |= bit;                          \
				learnt++;                                        \
			}                                                        \
		}                                                                \
	}

/* Argument classes (homeostat daemon --symbols args): hs_args. */
#include "args.bpf.h"
/* Connection throttle (homeostat daemon --throttle-connect): hs_throttle. */
#include "throttle.bpf.h"

/* thread_info.status bit the kernel sets at a 32-bit (i386) call's entry and clears
 * before the return to user mode (TS_COMPAT, what in_ia32_syscall() reads): a
 * 32-bit program's calls, and a 64-bit program's int 0x80, whichever the segment. */
#define HS_TS_COMPAT 0x0002

/* A call of a followed task that the common call (below) does not finish: a stale
 * profile state, a window not known complete, a call with an argument or throttle
 * hook, any miss or learnt pair. Redoes the common call's tests from the start. A
 * global function: the verifier checks it once, with `t` as plain memory of an
 * hs_task, whichever map holds it (a slot of hs_tids or task storage: two pointer
 * types, which a static function is verified for once each: with argument classes on
 * that exceeded the verifier's 1M-instruction budget). */
__attribute__((noinline)) int hs_general(struct hs_task *t, __u32 call)
{
	struct hs_config *cfg;
	__u32 tid, pid;
	struct hs_index *ix;
	struct hs_row *row = NULL;
	struct hs_profile *p = NULL;
	__u32 misses = 0, learnt = 0, pos, old, gen, r;
	__u64 *sw, s0, s1, lwin;
	__u32 lvalid;
	bool training;
	__u16 cur = call;
	int ls;

	if (!t || t->valid != HS_VALID)
		return 0;
	/* How often the common call falls through: the measure of what the cache of
	 * known windows saves (per CPU, one add on a path that costs far more). */
	count(HS_STAT_GENERAL);
	/* The window in calls (the common call kept it in local slots only), before
	 * anything below may empty the local table. */
	if (t->lvalid >= HS_SEQ)
		seq_from_local(t);
	/* The profile's state, looked up only when some profile changed since. */
	gen = hs_shared.generation;
	if (t->gen != gen) {
		p = bpf_map_lookup_elem(&hs_profiles, &t->key);
		if (p && p->igen && t->igen && p->igen != t->igen)
			p = NULL; /* another file's, whose inode number this one reuses */
		t->cached = p ? HS_CACHE_PROFILE | (p->state == HS_NORMAL ? HS_CACHE_NORMAL : 0) : 0;
		if (p && p->learn_flags && !learns_from(p)) {
			/* Not one of the profile's teachers: followed only once it is normal. */
			t->cached = t->cached & HS_CACHE_NORMAL ? t->cached | HS_CACHE_FOREIGN : 0;
		}
		if (p && (hs_args_on || hs_thr_on))
			t->cached |= HS_CACHE_HOOKS;
		t->slot = p ? p->slot : 0;
		t->gen = gen;
		local_reset(t);
	}
	if (!(t->cached & HS_CACHE_PROFILE))
		return 0;
	training = !(t->cached & HS_CACHE_NORMAL);
	t->pending++;

	/* seq[] as two little-endian words (seq[0] in the low bits of the first). */
	sw = (__u64 *)t->seq;
	s0 = sw[0];
	s1 = sw[1];
	/* The current call's local slot (a new one, or a new table when all are used). */
	ls = local_slot(t, cur);
	if (ls < 0) {
		if (t->nlocal >= HS_LOCAL)
			local_reset(t);
		ls = t->nlocal++ & (HS_LOCAL - 1);
		t->ltag[ls] = cur;
	}
	lwin = t->lwin;
	lvalid = t->lvalid;
	/* A full window whose eight pairs are known: neither index nor row. */
	if (lvalid >= HS_SEQ && !(lwin & ~t->known[ls & (HS_LOCAL - 1)]))
		goto tested;
	ix = bpf_map_lookup_elem(&hs_index, &t->slot);
	if (!ix)
		return 0;
	r = ix->row[cur & (HS_TABLE - 1)];
	if (!r && training && t->nseq)
		r = row_new(ix, cur);
	if (r)
		row = bpf_map_lookup_elem(&hs_rows, &r);
	/* A full window whose eight pairs are in the row: branch-free, and noted. */
	if (row && lvalid >= HS_SEQ &&
	    (HIT(s0, 0, 0) + HIT(s0, 16, 1) + HIT(s0, 32, 2) + HIT(s0, 48, 3) +
	     HIT(s1, 0, 4) + HIT(s1, 16, 5) + HIT(s1, 32, 6) + HIT(s1, 48, 7)) == HS_SEQ) {
		t->known[ls & (HS_LOCAL - 1)] |= lwin;
		goto tested;
	}
	PAIR(1) PAIR(2) PAIR(3) PAIR(4) PAIR(5) PAIR(6) PAIR(7) PAIR(8)
tested:
	/* Argument classes: off, the verifier drops this; on, other calls pay one load.
	 * The tables are indexed by a masked copy: clang may bounds-check one copy of
	 * `cur` and index with another, which the verifier does not tie to the check. */
	if (hs_args_on && cur < HS_ROW && hs_arg_spec[cur & (HS_ROW - 1)]) {
		r = hs_args(t, (__u64)hs_arg_spec[cur & (HS_ROW - 1)] << 32 |
				       (__u32)training << 16 | cur);
		misses += r & 1;
		learnt += r >> 1;
	}
	/* Connection throttle: off, the verifier drops this; on, other calls pay one load
	 * (and i386 calls a compare: their connects come through socketcall). */
	if (hs_thr_on && hs_thr_call[cur & (HS_TABLE - 1)])
		hs_throttle(t, cur);
	/* Shifting the window by one call is two stores. */
	sw[1] = (s1 << 16) | (s0 >> 48);
	sw[0] = (s0 << 16) | cur;
	if (t->nseq < HS_SEQ)
		t->nseq++;
	t->lwin = (lwin << 8) | (1ULL << (ls & (HS_LOCAL - 1)));
	if (lvalid < HS_SEQ)
		t->lvalid = lvalid + 1;
	/* The state is current as of `gen` and has a profile: the common call may take
	 * the next call once the window is full. */
	t->fast = lvalid + 1 >= HS_SEQ ? gen : 0;

	/* Locality frame: the slot leaving the window gives back its anomaly. With LFC 0
	 * every bit of the frame is 0 (lfc is the number of bits set), so a call without
	 * a miss changes nothing, and where the position of an all-zero ring stands does
	 * not matter: the common call writes nothing. Except with argument classes: their
	 * open fallback (args.bpf.h) counts calls with fpos. */
	if (!misses && !t->lfc) {
		if (hs_args_on)
			t->fpos = (t->fpos + 1) & (HS_LOCALITY - 1);
		goto framed;
	}
	pos = t->fpos & (HS_LOCALITY - 1);
	old = (t->frame[(pos >> 6) & 1] >> (pos & 63)) & 1;
	if (old && t->lfc)
		t->lfc--;
	if (misses) {
		t->frame[(pos >> 6) & 1] |= 1ULL << (pos & 63);
		t->lfc++;
	} else {
		t->frame[(pos >> 6) & 1] &= ~(1ULL << (pos & 63));
	}
	t->fpos = (pos + 1) & (HS_LOCALITY - 1);
framed:

	/* t->slot is the profile's: its state is current as of this generation. */
	if (t->pending >= HS_FLUSH_CALLS) {
		calls_add(t->slot, t->pending);
		t->pending = 0;
	}
	if (!(misses || learnt))
		return 0;
	if (!p)
		p = bpf_map_lookup_elem(&hs_profiles, &t->key);
	if (!p) {
		/* removed since: stale until the next generation */
		t->cached = 0;
		t->fast = 0;
		return 0;
	}
	/* An event: who made the call. */
	cfg = caller(&pid, &tid);
	if (!cfg)
		return 0;
	if (misses) {
		__u32 flags = 0;

		__sync_fetch_and_add(&p->anomalies, 1);
		/* The task only here: a helper call costs 17-21 ns on these machines
		 * (docs/ebpf.md, "The running task without a helper call"). */
		if (p->respond && respond_stop(bpf_get_current_task_btf(), pid, tid, cur))
			flags = HS_EVF_STOPPED;
		if (t->cached & HS_CACHE_FOREIGN)
			flags |= HS_EVF_FOREIGN;
		emit(cfg, HS_EV_ANOMALY, pid, tid, cur, &t->key, misses, t->lfc, flags);
	}
	if (learnt) {
		__sync_fetch_and_add(&p->new_pairs, learnt);
		emit(cfg, HS_EV_NEW_PAIRS, pid, tid, cur, &t->key, learnt, t->lfc, 0);
	}
	return 0;
}

/* Every call the common path below does not finish: a task's first call (its state
 * made, from its parent's or its executable), then the general path. Not inlined:
 * the common path then makes no call after the task's state is found, and keeps its
 * few values in registers (with this code inline, clang spilled a dozen of them to
 * the stack on every call). */
static __noinline int sys_enter_slow(struct hs_task *t, __u32 call, long id, __u64 key)
{
	struct task_struct *task;
	struct hs_config *cfg;
	__u32 tid, pid;

	/* Found by the common call, with its call's row: the general path needs nothing
	 * more, and no helper call (a new process's first calls all come here). */
	if (t && t->valid == HS_VALID)
		return hs_general(t, call);
	task = bpf_get_current_task_btf();
	/* The call's row, again (the common call's is only right with the task). */
	call = id < HS_ROW ? id : HS_ROW - 1;
	if (task->thread_info.status & HS_TS_COMPAT)
		call += HS_COMPAT;
	/* The common path did not find the task (its state in task storage, or none
	 * yet): its state as task_get finds it. */
	if (!t)
		t = task_at(task, key);
	if (!t || t->valid != HS_VALID) {
		struct hs_task *inherited;

		if (t && t->valid == HS_VALID_OUT)
			return 0;
		cfg = caller(&pid, &tid);
		if (!cfg)
			return 0;
		inherited = bpf_map_lookup_elem(&hs_forks, &tid);
		if (inherited) {
			/* First call of a forked child whose slots were both taken at the
			 * fork: its parent's state (a slot, if one is free now). */
			t = task_create(task, key);
			if (!t)
				return 0;
			*t = *inherited;
			t->pending = 0; /* the parent's, counted by the parent */
			t->tid = tid;
			bpf_map_delete_elem(&hs_forks, &tid);
		} else {
			/* A task that predates us: read its executable now. */
			t = task_init(cfg, task, key, pid, tid, BPF_CORE_READ(task, mm, exe_file),
				      NULL);
		}
		if (!t || t->valid != HS_VALID)
			return 0;
	}
	return hs_general(t, call);
}

/* The common call: a task following a profile whose state it has cached, whose full
 * window of eight calls is known to be in the profile (its table of known pairs),
 * with no argument or throttle hook for this call. It reads one cache line of the
 * task's hs_tids slot, one word of `known`, the line of hs_shared and the
 * task_struct's status word (its first line), and writes two words: the call count
 * and the window in local slots (seq is rebuilt from it by the next general call);
 * the locality frame only when some bit of it is set; once in HS_FLUSH_CALLS calls,
 * the count to its profile slot's per-CPU counter (hs_calls). Anything else is
 * sys_enter_slow's. */
static __always_inline int on_sys_enter(long id, __u64 key)
{
	struct task_struct *task;
	struct hs_task *t = NULL;
	struct hs_tid *s;
	__u64 lwin, *fw, bit, known0;
	__u32 cur, pos, cached, gen, pending;
	int ls;

	if (id < 0)
		return 0;
	cur = id < HS_ROW ? id : HS_ROW - 1;
	/* task_get, inline, without asking for the task: `key` is the running task's,
	 * from the call's user registers (hs_tid). A slot whose owner word is this key
	 * is the running task's: a kernel stack is one task's while it lives, and its
	 * slot is freed at its exit. Else the slow path (task storage, or a first
	 * call). */
	s = slot_at(key);
	if (!s)
		goto slow;
	t = &s->t;
	/* Read-only: loads only (the task is the running one, so alive). */
	task = bpf_core_cast((void *)s->task, struct task_struct);
	if (task->thread_info.status & HS_TS_COMPAT)
		cur += HS_COMPAT;
	/* Opaque to clang from here, which would otherwise drop the masks below as
	 * redundant (cur < HS_TABLE) where the verifier cannot see why. */
	barrier_var(cur);
	/* known[] is the second cache line the common call needs (the owner test has
	 * just read the first), and which word of it only the slot search below says: a
	 * load of its first word now starts fetching the line meanwhile. */
	known0 = t->known[0];
	barrier_var(known0);
	/* Valid, cached as of this generation, with a profile and a full window, in one
	 * compare (hs_task.fast). lvalid 8 implies nseq 8 (they grow together; a new
	 * table resets lvalid only): neither counter is written below. */
	gen = hs_shared.generation;
	if (t->fast != gen) {
		/* Not followed (outside the scope, or no profile as of this generation):
		 * nothing to do, without the slow path's helper call. */
		if (t->valid == HS_VALID_OUT ||
		    (t->valid == HS_VALID && t->gen == gen && !(t->cached & HS_CACHE_PROFILE)))
			return 0;
		goto slow;
	}
	cached = t->cached;
	if ((cached & HS_CACHE_HOOKS) &&
	    ((hs_args_on && cur < HS_ROW && hs_arg_spec[cur & (HS_ROW - 1)]) ||
	     (hs_thr_on && hs_thr_call[cur & (HS_TABLE - 1)])))
		goto slow;
	ls = local_slot(t, cur);
	if (ls < 0)
		goto slow;
	lwin = t->lwin;
	if (lwin & ~t->known[ls & (HS_LOCAL - 1)])
		goto slow;
	/* The count, flushed here to the slot's per-CPU counter (fast == gen: t->slot
	 * is the profile's). */
	pending = t->pending + 1;
	if (pending >= HS_FLUSH_CALLS) {
		calls_add(t->slot, pending);
		pending = 0;
	}
	t->pending = pending;
	t->lwin = (lwin << 8) | (1ULL << (ls & (HS_LOCAL - 1)));
	/* No miss: the frame changes only if the bit leaving it was set (LFC 0: none is). */
	if (t->lfc) {
		pos = t->fpos & (HS_LOCALITY - 1);
		fw = &t->frame[(pos >> 6) & 1];
		bit = 1ULL << (pos & 63);
		if (*fw & bit) {
			*fw &= ~bit;
			t->lfc--;
		}
		t->fpos = (pos + 1) & (HS_LOCALITY - 1);
	} else if (cached & HS_CACHE_HOOKS) {
		t->fpos = (t->fpos + 1) & (HS_LOCALITY - 1);
	}
	return 0;
slow:
	return sys_enter_slow(t, cur, id, key);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter_btf, struct pt_regs *regs, long id)
{
	return on_sys_enter(id, regs_key(regs));
}

/* Fallback when tp_btf cannot be loaded: the same raw_syscalls/sys_enter tracepoint,
 * untyped. A raw tracepoint rather than a classic one because attaching a classic
 * tracepoint needs tracefs mounted, which it is not on these machines. */
SEC("raw_tp/sys_enter")
int sys_enter_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return on_sys_enter((long)ctx->args[1],
			    regs_key(bpf_core_cast((void *)ctx->args[0], struct pt_regs)));
}

#ifdef HS_FLOOR
/* Feature `floor`: programs on the same hooks that return at once, the price of the
 * tracepoint alone. A floor build attaches one of these at start and can swap it for
 * the real program above and back (the loader's `floor` module), so that benchmarks
 * time both in one daemon, a moment apart. Separate programs, not a flag the real one
 * reads: the real program stays the one a release build runs. */
SEC("tp_btf/sys_enter")
int BPF_PROG(floor_btf, struct pt_regs *regs, long id)
{
	return 0;
}

SEC("raw_tp/sys_enter")
int floor_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return 0;
}
#endif

/* fork/clone (threads too): the child inherits its parent's sequence and locality
 * frame, as in pH, so forking does not wash an anomaly away. Runs in the parent
 * before the child is first scheduled (kernel_clone: the tracepoint, then
 * wake_up_new_task), so the child's slot is filled before the child can read it;
 * the child's address, which the raw tracepoint gives as a number, is all its owner
 * word needs. A child both of whose slots are others' gets its state through
 * hs_forks. */
SEC("raw_tp/sched_process_fork")
int sched_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = bpf_get_current_task_btf();
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 ctid = BPF_CORE_READ(child, pid);
	__u64 pkey = task_key(parent), ckey;
	struct hs_task *t;
	struct hs_tid *s;

	/* The child's key: its registers lie where its parent's do, on its own stack
	 * (the raw tracepoint gives the child as a number, which the helper does not
	 * take). Both stacks read as numbers (a direct load of parent->stack is a
	 * pointer to the verifier, and the sum then pointer arithmetic it refuses). */
	ckey = pkey - (__u64)BPF_CORE_READ(parent, stack) + (__u64)BPF_CORE_READ(child, stack);
	t = task_at(parent, pkey);

	/* A slot that the new child's key owns already is stale: the task whose stack
	 * this was exited unseen (only before sched_process_exit was attached, which
	 * the loader attaches first). Left, the child would take the dead task's state
	 * for its own. Nobody else writes a held slot's owner. */
	s = slot_at(ckey);
	if (s)
		s->owner = 0;
	if (!t || !t->valid)
		return 0;
	s = slot_claim(ckey);
	if (s) {
		s->task = ctx->args[1];
		s->t = *t;
		s->t.pending = 0; /* the parent's, counted by the parent */
		s->t.tid = ctid;
		return 0;
	}
	count(HS_STAT_TIDS_TAKEN);
	if (bpf_map_update_elem(&hs_forks, &ctid, t, BPF_ANY))
		count(HS_STAT_TASKS_FULL);
	return 0;
}

/* Adds a task's pending calls to its profile's counter (at exec and exit). */
static __always_inline void flush_calls(struct hs_task *t)
{
	struct hs_profile *p;

	if (!t || t->valid != HS_VALID || !t->pending)
		return;
	p = bpf_map_lookup_elem(&hs_profiles, &t->key);
	if (p)
		__sync_fetch_and_add(&p->calls, t->pending);
	t->pending = 0;
}

/* The task's last calls are counted, and its slot freed: its stack, the slot's key,
 * is freed after this, and can be the next task's at once. */
SEC("raw_tp/sched_process_exit")
int sched_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 key = task_key(task);

	flush_calls(task_at(task, key));
	slot_release(key);
	return 0;
}

/* execve: the task starts afresh under the new executable's profile, in the slot it
 * has (its key, its stack, stays the same through a multithreaded exec, which gives
 * it the leader's tid: task_init records the new one). */
SEC("raw_tp/sched_process_exec")
int sched_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid, pid = pid_tgid >> 32;
	struct hs_config *cfg = get_config();
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 key = task_key(task);

	bpf_map_delete_elem(&hs_forks, &tid);
	flush_calls(task_at(task, key));
	if (cfg)
		task_init(cfg, task, key, pid, tid, BPF_CORE_READ(bprm, file), bprm);
	return 0;
}

/* Where BPF LSM loads (not on the machines this was built on: EPERM under lockdown),
 * execve is refused in the kernel too, as pH did: a task of a responding normal
 * profile whose LFC (including the execve call itself, tested at its sys_enter) is at
 * least suspend_execve gets EPERM. This closes the gap between the kernel's stop and
 * the daemon's takeover. Loaded only when asked for (Options::exec_lsm); a refusal
 * to load is not fatal: the daemon reports it and runs without. */
SEC("lsm/bprm_check_security")
int BPF_PROG(exec_check, struct linux_binprm *bprm, int ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct hs_config *cfg = get_config();
	struct hs_profile *p;
	struct hs_task *t;

	if (ret || !cfg || !cfg->suspend_execve)
		return ret;
	t = task_get(bpf_get_current_task_btf());
	if (!t || t->valid != HS_VALID || t->lfc < cfg->suspend_execve)
		return 0;
	p = bpf_map_lookup_elem(&hs_profiles, &t->key);
	if (!p || p->state != HS_NORMAL || !p->respond)
		return 0;
	emit(cfg, HS_EV_EXEC_REFUSED, pid_tgid >> 32, (__u32)pid_tgid, 0, &t->key, 0, t->lfc,
	     0);
	return -1; /* -EPERM */
}

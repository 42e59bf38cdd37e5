/* Types shared by homeostat.bpf.c and the Rust loader. libbpf-cargo generates their
 * #[repr(C)] Rust twins from the object's BTF (the skeleton's `types` module), and
 * src/abi.rs decodes map values and events through those, so the two cannot drift;
 * only the constants below are repeated in src/abi.rs. */
#ifndef __HOMEOSTAT_H__
#define __HOMEOSTAT_H__

#define HS_WINDOW 9   /* lookahead window: current call + 8 predecessors */
#define HS_SEQ 8      /* predecessors kept per task */
#define HS_LOCALITY 128

/* profile.state */
#define HS_TRAINING 0
#define HS_NORMAL 1

/* event.kind */
#define HS_EV_ANOMALY 1
#define HS_EV_NEW_PAIRS 2
#define HS_EV_EXEC 3
#define HS_EV_EXEC_REFUSED 4 /* the LSM program refused an execve (lfc: the task's) */

/* stats indices (per-CPU counters) */
#define HS_STAT_LOST_EVENTS 0   /* ring buffer full: event dropped */
#define HS_STAT_ROWS_FULL 1     /* rows map full: pairs were not learnt */
#define HS_STAT_TASKS_FULL 2    /* task storage or fork map insert failed */
#define HS_STAT_PROFILES_FULL 3 /* profiles map insert failed (auto_create) */
#define HS_STAT_STOPS_FAILED 4  /* a response was due but the stop could not be made */
#define HS_STAT_EVENTS 5        /* events submitted on this CPU (wakeup batching) */
#define HS_STAT_TIDS_TAKEN 6    /* both of a task's hs_tids slots were others': task storage */
#define HS_STAT_GENERAL 7       /* calls of followed tasks that took the general path */
#define HS_NSTATS 8

struct hs_key {
	__u64 dev; /* st_dev encoding, as stat(2) reports it */
	__u64 ino;
};

/* Call numbers are columns of pH's table: 9 bits. Larger numbers (x32 calls) all land
 * on the last column. */
#define HS_ROW 512
/* Rows per profile: x86_64 calls 0..511, then i386 (compat) calls at 512 + their
 * number, so that a 32-bit program's calls have rows of their own. */
#define HS_TABLE 1024
#define HS_COMPAT HS_ROW
/* Profiles (slots of hs_index) and rows of the pool (row 0: the all-zero row, never
 * written, which "no row" points to). */
#define HS_SLOTS 4096
#define HS_ROWS 65536

/* A profile's index into the row pool: row[cur] is the pool index of the row of call
 * cur (0: none). Written with compare-and-swap, by the programs and by userspace (the
 * map is mmapped). */
struct hs_index {
	__u32 row[HS_TABLE];
};

/* One row of pH's table: mask[prev] has bit d-1 set when prev was seen d calls
 * before cur. */
struct hs_row {
	__u8 mask[HS_ROW];
};

struct hs_profile {
	__u32 state;
	__u32 respond;   /* normal: stop a process at its first anomaly (enforce mode) */
	__u64 calls;     /* calls seen (either state) */
	__u64 new_pairs; /* pairs learnt in the kernel */
	__u64 anomalies; /* anomalous calls while normal */
	__u32 slot;      /* its hs_index entry, for life (from hs_free_slots) */
	/* Learn only from some tasks (HS_LEARN_*; 0: all): a task that does not match
	 * neither trains the profile nor counts toward its limits, and is still tested
	 * once it is normal. Decided when the task's cached state is refreshed (exec, any
	 * profile change), so it costs the common call nothing. */
	__u32 learn_flags;
	__u32 learn_uid;    /* with HS_LEARN_UID: this uid only */
	/* The file's i_generation when the profile was made (0: not known yet, e.g.
	 * loaded from an older file: the next exec's is adopted). An exec of the same
	 * (dev, ino) with another generation is another file that reuses a deleted one's
	 * inode number: it must not be judged by the old file's profile. */
	__u32 igen;
	__u64 learn_cgroup; /* with HS_LEARN_CGROUP: this cgroup v2 id only */
};
#define HS_LEARN_UID 1
#define HS_LEARN_CGROUP 2

/* A task's own table of pairs known to be in its profile, over a local alphabet of
 * the last HS_LOCAL distinct calls it made (see hs_task.known). */
#define HS_LOCAL 8
#define HS_LOCAL_FREE 0xffff /* hs_task.ltag of an unused slot (calls are < 1024) */

struct hs_task {
	/* The common call's fields first, in 48 bytes: a task's hs_tids slot starts 16
	 * bytes into a cache line (after its owner word and tid), so these share that
	 * line. `known` fills the next line exactly; the rest is for the other calls. */
	__u32 gen;         /* the profile's entry is `cached` as of this generation */
	__u8 valid;        /* HS_VALID once initialised (storage is created zeroed) */
	__u8 cached;       /* HS_CACHE_* */
	__u8 lvalid;       /* valid bytes of lwin (at most HS_SEQ) */
	__u8 nlocal;       /* slots of ltag in use */
	__u32 pending;     /* calls not yet added to the profile's counter */
	__u32 lfc;
	/* The common call's test, without the profile's index or rows (whose cache
	 * lines a busy machine evicts between two calls: they were the cost of a call).
	 * The task's calls get local slots, in order of first use: ltag[i] is the call
	 * of slot i; when a new call finds all HS_LOCAL slots used, the table starts
	 * again empty. lwin is the window in slots, one byte per distance: byte d-1 has
	 * the bit of the slot of the call d back (the last `lvalid` bytes valid).
	 * known[c] is laid out the same: byte d-1 has bit p set when the pair (prev of
	 * slot p, cur of slot c, distance d) was found in the profile. A full window is
	 * known when lwin & ~known[cur's slot] is 0: neither index nor row. Pairs are
	 * only ever added to a profile while it exists, so a known bit stays true until
	 * the generation moves (the table is emptied then, and at exec). */
	__u64 lwin;
	__u16 ltag[HS_LOCAL];
	__u32 fpos;        /* next slot of the locality frame */
	/* The common call's one test of the state: the generation (hs_shared.generation)
	 * as of which the task may take the common call (valid is HS_VALID, gen is the
	 * generation, cached has HS_CACHE_PROFILE, lvalid is HS_SEQ), else 0. Written by
	 * the general path only, at the end of each call it finishes (and copied with
	 * the rest of the state at a fork); cleared wherever one of those four may stop
	 * holding (task_init, local_reset, a removed profile). A generation move makes
	 * every task's stale at once. The generation passes through 0 only for an
	 * instant every 2^32 bumps (hs_shared.generation): a task that is not followed
	 * could then take one common call, one that is followed cannot (its fast is 0
	 * only while lvalid < HS_SEQ, when known[] is empty). */
	__u32 fast;
	__u64 known[HS_LOCAL];
	/* The last calls, seq[0] the previous one; 8-aligned: read as two u64. Kept by
	 * the calls that take the general path only: while lvalid is HS_SEQ, the window
	 * is lwin over ltag (the common call writes nothing else) and seq is rebuilt
	 * from them when needed (hs_seq_from_local; userspace does the same). */
	__u16 seq[HS_SEQ];
	struct hs_key key;
	__u64 frame[HS_LOCALITY / 64];
	__u32 slot;        /* the profile's slot, valid with HS_CACHE_PROFILE */
	__u32 igen;        /* the executable's i_generation (hs_profile.igen) */
	__u32 nseq;        /* valid entries of seq */
	/* The task's tid as of the state's making (its first call seen, fork, exec:
	 * after a multithreaded exec, the leader's it took): userspace finds a task's
	 * hs_tids slot by it (the slot's key is not a number userspace can know). */
	__u32 tid;
};

/* A task's state in the array hs_tids, at the slot its key hashes to or that slot's
 * neighbour (slot_other in homeostat.bpf.c): the task's own
 * while `owner` is its key, the address of its user registers at the top of its
 * kernel stack (0: free). Why the stack: it is what the sys_enter tracepoint passes
 * (its `regs`), so the common call finds the running task's slot with neither a
 * helper call nor a read of the task; a kernel stack belongs to one task while it
 * lives, and is freed only after the task's sched_process_exit, which frees the
 * slot. Laid out so that the task's state starts 16 bytes into a cache line, as task
 * storage's does: the common call's fields share the first line with `owner` and
 * `task`, `known` fills the second (offset 64), and the element is three lines (192
 * bytes, a multiple of 64: with the array's values page-aligned, see hs_tids, every
 * element is line-aligned). */
struct hs_tid {
	__u64 owner;
	/* The owner's task_struct, written with the claim: the common call reads the
	 * task's status word (TS_COMPAT) through it, read-only. */
	__u64 task;
	struct hs_task t;
};
/* Slots at most, and by default (a power of two): 32768 x 192 B = 6 MiB,
 * preallocated. With n tasks alive in N slots, about 2n^3 / 3N^2 of them find both
 * of their slots held by others and keep their state in task storage. */
#define HS_TIDS 32768

/* hs_task.valid */
#define HS_VALID 1
#define HS_VALID_OUT 2 /* outside hs_config.scope_cgroup: not followed until its exec */

/* hs_task.cached */
#define HS_CACHE_PROFILE 1 /* the executable has a profile */
#define HS_CACHE_NORMAL 2  /* ... in state normal */
#define HS_CACHE_FOREIGN 4 /* ... whose learn filter this task does not match */
/* Argument classes or the throttle are on: the common call looks at their tables
 * (so that, with both off, it reads nothing of theirs). */
#define HS_CACHE_HOOKS 8
/* Calls counted per task before they are added to its profile slot's per-CPU count
 * (hs_calls; at exec and exit, to the profile's `calls`). */
#define HS_FLUSH_CALLS 64

struct hs_config {
	__u32 ignore_tgid;   /* the daemon itself */
	__u32 auto_create;   /* new executables get a training profile in the kernel */
	__u32 wakeup_every;  /* wake the consumer every N events (0 = every event) */
	__u32 pad0;
	__u32 suspend_execve; /* LSM: refuse execve of a responding task at this LFC (0: off) */
	__u32 pad;
	/* Follow only tasks of this cgroup (v2 id; 0: every task), decided at exec and at
	 * a predating task's first call: an outside task is marked HS_VALID_OUT and costs
	 * the common path nothing more than today's `valid` test. */
	__u64 scope_cgroup;
};

struct hs_event {
	__u32 kind;
	__u32 pid;
	__u32 tid;
	__u32 nr;
	__u64 dev;
	__u64 ino;
	__u32 misses; /* anomaly: missing pairs; new_pairs: pairs learnt */
	__u32 lfc;
	__u32 flags;  /* HS_EVF_* */
	__u32 igen;   /* exec: the executable's i_generation; else 0 */
};

/* event.flags */
#define HS_EVF_STOPPED 1 /* anomaly: the process was sent SIGSTOP for a response */
#define HS_EVF_FOREIGN 2 /* anomaly: of a task the profile does not learn from */
/* exec: the profile of this (dev, ino) was made for another file (its i_generation
 * differs: the inode number was reused); the task is not followed until userspace
 * replaces the profile */
#define HS_EVF_REPLACED 4

/* A process stopped for a response, by tgid, until userspace has taken it over. Its
 * keeper reads this map to resume every process left stopped if the daemon dies. */
struct hs_stop {
	__u64 ktime_ns; /* bpf_ktime_get_ns() at the stop */
	__u32 tid;      /* the thread whose call was anomalous */
	__u32 nr;       /* that call */
};

#define HS_PATH 256

/* kind HS_EV_EXEC: the path as passed to execve (may be relative), NUL-terminated;
 * and the path of the file that runs (the interpreter of a #! script, else the
 * same path): the profile is the interpreter's, the script is recorded beside it. */
struct hs_exec_event {
	struct hs_event ev;
	char path[HS_PATH];
	char interp[HS_PATH];
};

#endif

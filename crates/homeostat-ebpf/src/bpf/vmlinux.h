/* Minimal CO-RE kernel types for homeostat.bpf.c (x86_64).
 *
 * Hand-written instead of dumped from the build machine's /sys/kernel/btf/vmlinux, so
 * the build does not depend on the kernel it runs on. Every struct is marked
 * preserve_access_index: libbpf relocates each field offset against the running
 * kernel's BTF at load time, so only the fields used here need to exist, in any order.
 */
#ifndef __HOMEOSTAT_VMLINUX_H__
#define __HOMEOSTAT_VMLINUX_H__

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef __u32 dev_t;
typedef int pid_t;
typedef _Bool bool;
enum { false = 0, true = 1 };

/* Map types and flags (UAPI, stable numbers). */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_QUEUE = 22,
	BPF_MAP_TYPE_RINGBUF = 27,
	BPF_MAP_TYPE_TASK_STORAGE = 29,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

enum {
	BPF_F_NO_PREALLOC = 1,
	BPF_F_MMAPABLE = 1024,
};

enum {
	BPF_LOCAL_STORAGE_GET_F_CREATE = 1,
};

enum {
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
};

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)

struct super_block {
	dev_t s_dev;
};

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
	__u32 i_generation;
};

struct file {
	struct inode *f_inode;
};

struct mm_struct {
	struct file *exe_file;
};

struct thread_info {
	__u32 status; /* TS_COMPAT: the current call entered as an i386 one */
};

struct task_struct {
	struct thread_info thread_info;
	void *stack; /* its kernel stack, whose top holds its user registers */
	unsigned int ptrace;
	pid_t pid;
	pid_t tgid;
	struct mm_struct *mm;
};

struct linux_binprm {
	struct file *file;
	const char *filename;
	const char *interp; /* the interpreter's path for a #! script, else filename */
};

struct pt_regs {
	unsigned long orig_ax;
};

#pragma clang attribute pop

/* Context of raw_tp programs: the tracepoint's arguments as u64s. */
struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

#endif

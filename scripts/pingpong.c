/* Pipe ping-pong for scripts/bench-daemon.sh (workload `pingpong`): N round trips
 * of one byte between a parent and its child through two pipes. Run on one CPU
 * (taskset), each trip is four calls and two context switches: the workload with
 * the most switches per call, which was the worst case for the sched_switch program
 * the daemon had until the thirteenth session (docs/ebpf.md, "The running task
 * without a helper call"); kept as the case where tasks alternate fastest. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 100000;
	int a[2], b[2];
	char c = 0;
	pid_t p;

	if (pipe(a) || pipe(b))
		return 1;
	p = fork();
	if (p < 0)
		return 1;
	if (p == 0) {
		for (long i = 0; i < n; i++)
			if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1)
				return 1;
		return 0;
	}
	for (long i = 0; i < n; i++)
		if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
			return 1;
	return waitpid(p, NULL, 0) == p ? 0 : 1;
}

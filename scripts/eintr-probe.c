/* eintr-probe: do calls that natively never fail with EINTR fail so under a monitor?
 *
 * SIGALRM fires every 20 us through a handler installed WITHOUT SA_RESTART; the
 * program makes getpid, dup, close, write (to a regular file) and, every 100 rounds,
 * fork, checks every result, and prints how many failed with EINTR (and any other
 * error). With a second argument it also installs a SIGCHLD handler without
 * SA_RESTART (the nested-handler case described in docs/seccomp-supervisor.md).
 *
 *   cc -O2 -o /tmp/eintr-probe scripts/eintr-probe.c
 *   /tmp/eintr-probe 100000                                  # natively: all zero
 *   homeostat run -q -- /tmp/eintr-probe 100000              # under the launcher
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t alarms;
static void on_alarm(int s) { (void)s; alarms++; }

struct tally { const char *name; long calls, eintr, other; int last_errno; };
static void note(struct tally *t, long r) {
    t->calls++;
    if (r < 0) { if (errno == EINTR) t->eintr++; else { t->other++; t->last_errno = errno; } }
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART */
    sigaction(SIGALRM, &sa, NULL);
    if (argc > 2) sigaction(SIGCHLD, &sa, NULL); /* second handler: see the report */
    char path[] = "/tmp/eintr-probeXXXXXX";
    int file = mkstemp(path);
    unlink(path);
    if (file < 0) { perror("mkstemp"); return 1; }
    struct itimerval it = {{0, 20}, {0, 20}};
    setitimer(ITIMER_REAL, &it, NULL);
    struct tally t[5] = {{"getpid"}, {"dup"}, {"close"}, {"write"}, {"fork"}};
    for (long i = 0; i < n; i++) {
        note(&t[0], syscall(SYS_getpid));
        int d = dup(file);
        note(&t[1], d);
        if (d >= 0) note(&t[2], close(d));
        note(&t[3], write(file, "x", 1));
        if (i % 100 == 0) {
            pid_t p = fork();
            if (p == 0) _exit(0);
            note(&t[4], p);
            while (waitpid(-1, NULL, WNOHANG) > 0) {}
        }
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    while (wait(NULL) > 0 || errno == EINTR) {}
    printf("signals %ld;", (long)alarms);
    for (int k = 0; k < 5; k++) {
        printf(" %s %ld/%ld EINTR", t[k].name, t[k].eintr, t[k].calls);
        if (t[k].other) printf(" (+%ld %s)", t[k].other, strerror(t[k].last_errno));
    }
    printf("\n");
    return 0;
}

/* pc-shim: what supervises one instance, in place of a Python interpreter each.
 *
 *   pc-shim [-i] [-L LEASE_DIR] [-p PROCESS] [-c CHECK] [-g GRACE]
 *           [-o LOG_BASE [-n FIRST] [-r BYTES]] [-x EXIT_FILE] [-e ENV_FD] -- COMMAND...
 *
 * It runs COMMAND as its child and waits for it, and:
 *  - ends it by the time the node's lease ends, with no help from the daemon
 *    (which may be frozen or dead). LEASE_DIR/lease holds the lease's end
 *    (epoch seconds); it is read every CHECK seconds and again right at the end
 *    less GRACE (a renewal may have moved it on meanwhile). Once the end is less
 *    than GRACE seconds away: SIGTERM to the instance's processes, SIGKILL to
 *    what is left at the end itself, the line "lease expired at ...: this node
 *    may no longer run PROCESS" and exit code 75. So nothing of the instance
 *    runs past the lease's end, however CHECK is set: the swarm starts it
 *    elsewhere right after that end (plus clock slack). No lease file: no
 *    enforcement (a node alone). A file it cannot read or parse counts as long
 *    expired. The same rules as peoplescloud/runtime/lease.py.
 *  - with -o (the process runtime): timestamps each line of the command's
 *    stdout+stderr into LOG_BASE.<n>.log, from n = FIRST; past BYTES it goes on
 *    in n+1 and removes n-1 (one old file is kept). It opens the next file only
 *    after its last write to this one, which lets a reader finish a file once it
 *    sees the next. Without -o the output stays on our own stdout (docker's log).
 *  - with -x: writes the command's exit status there when it ends (128+N when
 *    killed by signal N, 75 when the lease ended it): a restarted daemon is not
 *    its parent and cannot wait() for it.
 *  - with -e: the command's environment is read from that descriptor (NUL-ended
 *    NAME=VALUE), so config vars reach the app alone, never our own environ.
 *
 * "The instance's processes" are, by default, our process group (the process
 * runtime: we lead a session of our own; the daemon signals the group to stop
 * an instance, which reaches the app directly, so SIGTERM/INT/HUP to us are
 * ignored: we stay to record how the app ends). With -i we are PID 1 of a
 * container: they are every other process of it (kill(-1)), and we are its
 * init: `docker stop`'s SIGTERM (and any of FORWARDED) goes on to all of them,
 * orphans are reaped, and we exit with the command's status when it ends.
 *
 * Linux only (signalfd, /proc). Built static (`cc -static -Os`) by
 * peoplescloud/runtime/shim/__init__.py, so it runs in any container image.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LEASE_EXIT 75
#define LINE_MAX_BYTES 65536 /* a longer line is logged in pieces of this size */

extern char **environ;

static int init_mode;              /* -i */
static const char *lease_dir = ""; /* -L; "": no lease */
static const char *process = "app";
static double check_every = 1.0, grace = 3.0;
static const char *log_base;       /* -o; NULL: the output is not ours to log */
static long log_number;            /* -n */
static long long log_limit = 10LL << 20;
static int log_fd = -1;
static long long log_size;
static pid_t child;
static int child_status = -1;      /* its wait status, once it ended */

static void fail(const char *what) {
    fprintf(stderr, "pc-shim: %s: %s\n", what, strerror(errno));
    exit(111);
}

static double clock_now(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The lease's end; -1 when there is no lease file. Unreadable or garbage: 0. */
static double read_lease(void) {
    char path[4096], text[64], *end;
    if (!*lease_dir) return -1;
    snprintf(path, sizeof path, "%s/lease", lease_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? -1 : 0;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return 0;
    text[n] = 0;
    double until = strtod(text, &end);
    end += strspn(end, " \t\r\n");
    return end == text || *end ? 0 : until;
}

/* Whether the lease ends within GRACE (or has ended): time to stop. */
static int lease_ending(double until) {
    return until >= 0 && clock_now(CLOCK_REALTIME) > until - grace;
}

static void log_open(void) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s.%ld.log", log_base, log_number);
    log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (log_fd < 0) fail(path);
    log_size = fstat(log_fd, &st) == 0 ? st.st_size : 0;
}

/* One line into the log, after the time it came; rotates past the limit. */
static void log_line(const char *line, size_t len) {
    char stamp[48], path[4096];
    struct timespec t;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &t);
    gmtime_r(&t.tv_sec, &tm);
    size_t n = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(stamp + n, sizeof stamp - n, ".%06ldZ ", t.tv_nsec / 1000);
    struct iovec parts[3] = {{stamp, n}, {(void *)line, len}, {"\n", 1}};
    ssize_t wrote = writev(log_fd, parts, 3); /* a full disk loses lines, not the app */
    log_size += wrote > 0 ? wrote : 0;
    if (log_size < log_limit) return;
    close(log_fd);
    log_number++;
    log_open();
    snprintf(path, sizeof path, "%s.%ld.log", log_base, log_number - 2);
    unlink(path);
}

/* Read the app's output once; log each whole line. 1: read some, 0: end of
 * output (a last partial line logged), -1: nothing there now. */
static int pump(int fd) {
    static char buf[LINE_MAX_BYTES];
    static size_t held;
    ssize_t n = read(fd, buf + held, sizeof buf - held);
    if (n < 0) return errno == EINTR ? 1 : -1;
    if (n == 0) {
        if (held) log_line(buf, held);
        held = 0;
        return 0;
    }
    held += n;
    char *start = buf, *newline;
    while ((newline = memchr(start, '\n', buf + held - start))) {
        log_line(start, newline - start);
        start = newline + 1;
    }
    held -= start - buf;
    memmove(buf, start, held);
    if (held == sizeof buf) {
        log_line(buf, held);
        held = 0;
    }
    return 1;
}

/* Reap every child that ended (the command's status kept); whether any is left. */
static int reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        if (pid == child) child_status = status;
    return pid == 0;
}

/* Whether a live process other than us is in our group (read from /proc; a
 * zombie is dead), sending `sig` to each one found (0: none). */
static int group_others(int sig) {
    char path[64], stat[512], state;
    int found = 0, ppid, group;
    DIR *proc = opendir("/proc");
    struct dirent *entry;
    if (!proc) return 1; /* cannot tell: assume so, SIGKILL comes at the deadline */
    while ((entry = readdir(proc))) {
        pid_t pid = atoi(entry->d_name);
        if (pid <= 0 || pid == getpid()) continue;
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue; /* gone meanwhile */
        ssize_t n = read(fd, stat, sizeof stat - 1);
        close(fd);
        if (n <= 0) continue;
        stat[n] = 0;
        char *after = strrchr(stat, ')'); /* "pid (comm) state ppid pgrp": comm may hold ')' */
        if (!after || sscanf(after + 1, " %c %d %d", &state, &ppid, &group) != 3) continue;
        if (group != getpgrp() || state == 'Z' || state == 'X') continue;
        found = 1;
        if (sig) kill(pid, sig);
    }
    closedir(proc);
    return found;
}

/* Whether any process of the instance, other than us, is alive. */
static int others_alive(void) {
    int children = reap();
    return init_mode ? children : group_others(0);
}

static void signal_others(int sig) {
    if (init_mode)
        kill(-1, sig); /* PID 1: every process of the container but us */
    else if (sig == SIGTERM)
        killpg(0, sig); /* we block it ourselves */
    else
        group_others(sig);
}

/* Signals that came: a child ended, or (as init) one to pass on to everyone. */
static void on_signals(int sfd) {
    struct signalfd_siginfo info;
    while (read(sfd, &info, sizeof info) == sizeof info) {
        if (info.ssi_signo == SIGCHLD)
            reap();
        else if (init_mode)
            kill(-1, info.ssi_signo);
        /* else: sent to our group, it reached the app itself */
    }
}

/* The environment in descriptor `fd`: NUL-ended NAME=VALUE strings. */
static char **read_env(int fd) {
    size_t size = 0, room = 4096, count = 0;
    char *data = malloc(room);
    ssize_t n;
    while (data && (n = read(fd, data + size, room - size)) > 0)
        if ((size += n) == room) data = realloc(data, room *= 2);
    if (!data) fail("environment");
    close(fd);
    for (size_t i = 0; i < size; i++) count += data[i] == 0;
    char **env = calloc(count + 1, sizeof *env);
    if (!env) fail("environment");
    for (size_t i = 0, at = 0; i < size; i += strlen(data + i) + 1) env[at++] = data + i;
    return env;
}

static int exit_status(int status) {
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

int main(int argc, char **argv) {
    static const int forwarded[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
    char **env = environ, message[512], at[32];
    const char *exit_file = NULL;
    int option, out[2] = {-1, -1};
    while ((option = getopt(argc, argv, "+iL:p:c:g:o:n:r:x:e:")) != -1) {
        switch (option) {
        case 'i': init_mode = 1; break;
        case 'L': lease_dir = optarg; break;
        case 'p': process = optarg; break;
        case 'c': check_every = atof(optarg); break;
        case 'g': grace = atof(optarg); break;
        case 'o': log_base = optarg; break;
        case 'n': log_number = atol(optarg); break;
        case 'r': log_limit = atoll(optarg); break;
        case 'x': exit_file = optarg; break;
        case 'e': env = read_env(atoi(optarg)); break;
        default: return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "pc-shim: no command (see the top of pc-shim.c)\n");
        return 2;
    }
    if (init_mode && getpid() != 1) { /* kill(-1) elsewhere would hit every process of our uid */
        fprintf(stderr, "pc-shim: -i is for a container's init (PID 1) only\n");
        return 2;
    }

    /* Our group is the instance's: we lead a session of our own (the daemon
     * starts us so already; this keeps anyone else's group out of reach). */
    if (!init_mode) setsid();

    /* Signals come to us through a descriptor, in the loop below, never at a bad moment. */
    sigset_t mask, before;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        if (init_mode || forwarded[i] == SIGTERM || forwarded[i] == SIGINT || forwarded[i] == SIGHUP)
            sigaddset(&mask, forwarded[i]);
    sigprocmask(SIG_BLOCK, &mask, &before);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) fail("signalfd");
    if (log_base) log_open();

    double until = read_lease();
    int ended = lease_ending(until); /* ending already: the command never starts */
    if (!ended) {
        if (log_base && pipe2(out, O_CLOEXEC) < 0) fail("pipe");
        child = fork();
        if (child < 0) fail("fork");
        if (child == 0) {
            sigprocmask(SIG_SETMASK, &before, NULL);
            if (log_base && (dup2(out[1], 1) < 0 || dup2(out[1], 2) < 0)) _exit(111);
            execvpe(argv[optind], argv + optind, env);
            fprintf(stderr, "pc-shim: cannot run %s: %s\n", argv[optind], strerror(errno));
            _exit(127);
        }
        /* What the command needed (the sandbox's data files, the write end of its
         * output) is its alone: keep only our own descriptors. */
        DIR *fds = opendir("/proc/self/fd");
        struct dirent *entry;
        while (fds && (entry = readdir(fds))) {
            int fd = atoi(entry->d_name);
            if (fd > 2 && fd != dirfd(fds) && fd != sfd && fd != log_fd && fd != out[0]) close(fd);
        }
        if (fds) closedir(fds);
    }

    int reading = out[0] >= 0;
    double now, check_at = clock_now(CLOCK_MONOTONIC) + check_every, wait;
    if (ended) goto done;
    for (;;) {
        now = clock_now(CLOCK_MONOTONIC);
        if (ended) { /* the lease is ending: wait for every process, not just the child */
            if (!others_alive()) break;
            if (clock_now(CLOCK_REALTIME) >= until) signal_others(SIGKILL);
            wait = until - clock_now(CLOCK_REALTIME);
            wait = wait > 0 && wait < 0.1 ? wait : 0.1;
        } else {
            reap();
            if (child_status != -1 && !reading) break;
            if (now >= check_at || lease_ending(until)) { /* the end as of now */
                check_at = now + check_every;
                until = read_lease();
                if (lease_ending(until)) {
                    ended = 1;
                    signal_others(SIGTERM);
                    continue;
                }
            }
            wait = check_at - now; /* and no later than GRACE before the end */
            if (until >= 0 && until - grace - clock_now(CLOCK_REALTIME) < wait)
                wait = until - grace - clock_now(CLOCK_REALTIME);
        }
        int wait_ms = wait > 0 ? (int)(wait * 1000) + 1 : 0;
        struct pollfd polled[2] = {{sfd, POLLIN, 0}, {reading ? out[0] : -1, POLLIN, 0}};
        if (poll(polled, 2, wait_ms) < 0 && errno != EINTR) fail("poll");
        if (polled[0].revents) on_signals(sfd);
        if (polled[1].revents) reading = pump(out[0]) != 0;
    }
    if (reading) { /* what the ended processes wrote last, without waiting on anyone */
        fcntl(out[0], F_SETFL, O_NONBLOCK);
        while (pump(out[0]) > 0) continue;
    }

done:;
    int code = exit_status(child_status);
    if (ended) {
        time_t second = (time_t)until;
        struct tm tm;
        gmtime_r(&second, &tm);
        strftime(at, sizeof at, "%Y-%m-%dT%H:%M:%SZ", &tm);
        snprintf(message, sizeof message, "lease expired at %s: this node may no longer run %s", at, process);
        if (log_base)
            log_line(message, strlen(message));
        else
            printf("%s\n", message);
        code = LEASE_EXIT;
    }
    if (exit_file) { /* written whole, then renamed: a reader never sees half of it */
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", exit_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d", code) < 0 || fclose(f) != 0 || rename(tmp, exit_file) < 0)
            fail(exit_file);
    }
    return code;
}

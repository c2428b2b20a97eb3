/*
 * Load generator for `cargo xtask bench` (compiled by xtask with gcc -O2).
 *
 * Every mode is bounded in time AND count, talks only to the address it is given (the bench
 * uses 127.0.0.1 inside a network namespace it created), and prints ONE JSON line at the end
 * with its own counts, so the bench can compare them with what tracer reports.
 *
 *   refuse_flood refuse IP PORT SECONDS MAX   blocking socket/connect/close loop; a closed port
 *                                             answers with RST, connect() = ECONNREFUSED
 *   refuse_flood drop   IP PORT SECONDS MAX   non-blocking connect then close at once (for a
 *                                             port whose SYNs an nft rule drops)
 *   refuse_flood hold   IP PORT COUNT HOLD_MS non-blocking connects left open HOLD_MS
 *                                             (never finish connecting), then all closed
 *   refuse_flood churn  IP PORT CYCLES UP_MS DOWN_MS
 *                                             a listener that restarts CYCLES times: listens
 *                                             UP_MS (accepting), closed for DOWN_MS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void usage(void) {
    fprintf(stderr,
            "usage: refuse_flood refuse|drop IP PORT SECONDS MAX\n"
            "       refuse_flood hold IP PORT COUNT HOLD_MS\n"
            "       refuse_flood churn IP PORT CYCLES UP_MS DOWN_MS\n");
    exit(2);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* socket/connect/close as fast as one core allows; counts outcomes. */
static int run_connect_loop(struct sockaddr_in *sa, double seconds, long max, int nonblock) {
    long attempts = 0, refused = 0, connected = 0, inprogress = 0, other = 0, sock_err = 0;
    int last_errno = 0;
    double start = now_s(), end = start + seconds, t = start;
    while (attempts < max) {
        /* Check the clock every 256 attempts: bounded in time without a syscall per loop. */
        if ((attempts & 255) == 0) {
            t = now_s();
            if (t >= end)
                break;
        }
        int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
        if (fd < 0) {
            sock_err++;
            last_errno = errno;
            if (sock_err > 1000)
                break;
            continue;
        }
        attempts++;
        if (connect(fd, (struct sockaddr *)sa, sizeof(*sa)) == 0)
            connected++;
        else if (errno == ECONNREFUSED)
            refused++;
        else if (errno == EINPROGRESS)
            inprogress++;
        else {
            other++;
            last_errno = errno;
        }
        close(fd);
    }
    double secs = now_s() - start;
    printf("{\"mode\":\"%s\",\"attempts\":%ld,\"refused\":%ld,\"connected\":%ld,\"in_progress\":%ld,"
           "\"other_errors\":%ld,\"socket_errors\":%ld,\"last_errno\":%d,\"seconds\":%.6f,\"rate\":%.1f}\n",
           nonblock ? "drop" : "refuse", attempts, refused, connected, inprogress, other, sock_err, last_errno,
           secs, secs > 0 ? attempts / secs : 0.0);
    return 0;
}

static int run_hold(struct sockaddr_in *sa, long count, long hold_ms) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int *fds = calloc(count, sizeof(int));
    if (!fds)
        return 1;
    long opened = 0, inprogress = 0, other = 0;
    double start = now_s();
    for (long i = 0; i < count && now_s() - start < 10.0; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0)
            break;
        fds[opened++] = fd;
        if (connect(fd, (struct sockaddr *)sa, sizeof(*sa)) != 0 && errno == EINPROGRESS)
            inprogress++;
        else
            other++;
    }
    sleep_ms(hold_ms);
    for (long i = 0; i < opened; i++)
        close(fds[i]);
    free(fds);
    printf("{\"mode\":\"hold\",\"attempts\":%ld,\"in_progress\":%ld,\"other_errors\":%ld,\"hold_ms\":%ld,"
           "\"seconds\":%.6f}\n",
           opened, inprogress, other, hold_ms, now_s() - start);
    return 0;
}

static int run_churn(struct sockaddr_in *sa, long cycles, long up_ms, long down_ms) {
    long listens = 0, accepted = 0, bind_errors = 0;
    double start = now_s();
    for (long c = 0; c < cycles && now_s() - start < 120.0; c++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        if (fd >= 0)
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (fd < 0 || bind(fd, (struct sockaddr *)sa, sizeof(*sa)) != 0 || listen(fd, 128) != 0) {
            bind_errors++;
            if (fd >= 0)
                close(fd);
            sleep_ms(down_ms);
            continue;
        }
        listens++;
        double up_end = now_s() + up_ms / 1000.0;
        while (now_s() < up_end) {
            struct pollfd p = {fd, POLLIN, 0};
            int left = (int)((up_end - now_s()) * 1000) + 1;
            if (poll(&p, 1, left) > 0) {
                int c2;
                while ((c2 = accept(fd, NULL, NULL)) >= 0) {
                    accepted++;
                    close(c2);
                }
            }
        }
        close(fd);
        sleep_ms(down_ms);
    }
    printf("{\"mode\":\"churn\",\"listens\":%ld,\"accepted\":%ld,\"bind_errors\":%ld,\"seconds\":%.6f}\n", listens,
           accepted, bind_errors, now_s() - start);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 6)
        usage();
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1)
        usage();
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(argv[1], "refuse") || !strcmp(argv[1], "drop")) {
        double secs = atof(argv[4]);
        long max = atol(argv[5]);
        if (secs <= 0 || secs > 600 || max <= 0)
            usage();
        return run_connect_loop(&sa, secs, max, !strcmp(argv[1], "drop"));
    }
    if (!strcmp(argv[1], "hold")) {
        long count = atol(argv[4]), hold = atol(argv[5]);
        if (count <= 0 || count > 1000000 || hold < 0 || hold > 600000)
            usage();
        return run_hold(&sa, count, hold);
    }
    if (!strcmp(argv[1], "churn") && argc >= 7) {
        long cycles = atol(argv[4]), up = atol(argv[5]), down = atol(argv[6]);
        if (cycles <= 0 || cycles > 100000 || up < 0 || down < 0 || up > 10000 || down > 10000)
            usage();
        return run_churn(&sa, cycles, up, down);
    }
    usage();
    return 2;
}

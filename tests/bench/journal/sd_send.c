/* Benchmark (b): journald's own ceiling for entries with locald's fields.
 *
 * Reads lines from stdin and sends each with sd_journal_sendv() (libsystemd's
 * native-protocol client, blocking), with the same fields JournalSink sends
 * for a run line on stdout. Usage: sd-send PROJECT SERVICE < lines */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <systemd/sd-journal.h>

static struct iovec field(const char *fmt, const char *a) {
        char *s;
        if (asprintf(&s, fmt, a) < 0) exit(2);
        return (struct iovec){ .iov_base = s, .iov_len = strlen(s) };
}

int main(int argc, char **argv) {
        if (argc != 3) {
                fprintf(stderr, "usage: sd-send PROJECT SERVICE < lines\n");
                return 2;
        }
        char pid[32];
        snprintf(pid, sizeof pid, "%d", (int) getpid());
        struct iovec iov[9];
        iov[1] = field("PRIORITY=%s", "6");
        iov[2] = field("SYSLOG_IDENTIFIER=%s", argv[2]);
        iov[3] = field("LOCALD_PROJECT=%s", argv[1]);
        iov[4] = field("LOCALD_SERVICE=%s", argv[2]);
        iov[5] = field("LOCALD_PHASE=%s", "run");
        iov[6] = field("LOCALD_STREAM=%s", "stdout");
        iov[7] = field("LOCALD_PID=%s", pid);
        iov[8] = field("SYSLOG_PID=%s", pid);
        char *line = NULL, *msg = NULL;
        size_t cap = 0, msgcap = 0;
        ssize_t n;
        unsigned long sent = 0, failed = 0;
        while ((n = getline(&line, &cap, stdin)) > 0) {
                if (line[n - 1] == '\n') n--;
                if ((size_t) n + 9 > msgcap) {
                        msgcap = (size_t) n + 9;
                        msg = realloc(msg, msgcap);
                        if (!msg) return 2;
                }
                memcpy(msg, "MESSAGE=", 8);
                memcpy(msg + 8, line, (size_t) n);
                iov[0] = (struct iovec){ .iov_base = msg, .iov_len = 8 + (size_t) n };
                if (sd_journal_sendv(iov, 9) < 0) failed++; else sent++;
        }
        fprintf(stderr, "sd-send: %lu sent, %lu failed\n", sent, failed);
        return failed ? 1 : 0;
}

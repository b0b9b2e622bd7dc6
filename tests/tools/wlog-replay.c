/* wlog-replay.c - replay a prefix of a fault-injection write log onto a copy
 * of an image, as a crash at that point would have left it.
 *
 *   wlog-replay LOG count                 print the number of records
 *   wlog-replay LOG list                  one line per record: index kind offset length
 *   wlog-replay LOG apply BASE OUT K      OUT = BASE + the first K records
 *   wlog-replay LOG apply-list BASE OUT I...  OUT = BASE + records I..., in order */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block.h"

static int copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_CLOEXEC);
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    char buf[65536];
    ssize_t n = 0;
    while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof(buf))) > 0)
        if (write(out, buf, (size_t)n) != n)
            n = -1;
    int r = (in < 0 || out < 0 || n < 0) ? -1 : 0;
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    return r;
}

int main(int argc, char **argv)
{
    struct nv_error err = {0};
    struct bdrv_wlog log;
    if (argc < 3 || bdrv_wlog_load(argv[1], &log, &err) < 0) {
        fprintf(stderr, "wlog-replay: %s\n", err.msg[0] ? err.msg : "usage: see the source");
        return 2;
    }
    int status = 0;
    if (strcmp(argv[2], "count") == 0) {
        printf("%zu\n", log.count);
    } else if (strcmp(argv[2], "list") == 0) {
        static const char *const kinds[] = {"?", "write", "flush", "fault"};
        for (size_t i = 0; i < log.count; i++)
            printf("%zu %s %llu %u\n", i, kinds[log.records[i].kind],
                   (unsigned long long)log.records[i].offset, log.records[i].length);
    } else if (strcmp(argv[2], "apply") == 0 && argc == 6) {
        size_t k = strtoul(argv[5], NULL, 10);
        int fd = copy_file(argv[3], argv[4]) == 0 ? open(argv[4], O_RDWR | O_CLOEXEC) : -1;
        for (size_t i = 0; fd >= 0 && i < k && i < log.count && status == 0; i++)
            if (bdrv_wlog_apply(&log.records[i], fd, &err) < 0)
                status = 1;
        if (fd < 0 || status) {
            fprintf(stderr, "wlog-replay: %s\n", err.msg[0] ? err.msg : strerror(errno));
            status = 1;
        }
        if (fd >= 0)
            close(fd);
    } else if (strcmp(argv[2], "apply-list") == 0 && argc >= 5) {
        int fd = copy_file(argv[3], argv[4]) == 0 ? open(argv[4], O_RDWR | O_CLOEXEC) : -1;
        for (int i = 5; fd >= 0 && i < argc && status == 0; i++) {
            size_t k = strtoul(argv[i], NULL, 10);
            if (k >= log.count || bdrv_wlog_apply(&log.records[k], fd, &err) < 0)
                status = 1;
        }
        if (fd < 0 || status) {
            fprintf(stderr, "wlog-replay: %s\n", err.msg[0] ? err.msg : "bad record index");
            status = 1;
        }
        if (fd >= 0)
            close(fd);
    } else {
        fprintf(stderr, "wlog-replay: unknown command\n");
        status = 2;
    }
    bdrv_wlog_free(&log);
    return status;
}

/* nvtpm-io.c - a qemu-io-like test tool for nvtpm's block layer, so that one
 * script can drive both. Built in tests/, not installed.
 *
 *   nvtpm-io [-f raw|qcow2] [-r] [--cache MODE] [--fd NAME=N] -c CMD [-c CMD ...] SPEC
 *
 * It owns the image (the ownership lock) unless -r. Commands run in order; the
 * first that fails prints its error and the tool exits 1. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "block.h"

#define MAX_COMMANDS 256
#define MAX_ARGS     8

static const char usage[] =
    "Usage: nvtpm-io [-f raw|qcow2] [-r] [--cache MODE] [--fd NAME=N] -c CMD [-c CMD ...] SPEC\n"
    "Commands:\n"
    "  write [-P BYTE] OFF LEN     write LEN bytes of BYTE (default 0xcd) at OFF\n"
    "  write -z OFF LEN            write zeros (whole qcow2 v3 clusters become zero clusters)\n"
    "  read [-P BYTE] OFF LEN      read; with -P fail unless every byte is BYTE\n"
    "  flush                       flush to stable storage\n"
    "  lock shared|exclusive [MS]  take the access lock, waiting up to MS (default 0: once;\n"
    "                              -1: for ever)\n"
    "  unlock                      undo one lock\n"
    "  reopen -r|-w|--cache MODE   reopen read-only, read-write (owner) or with a cache mode\n"
    "  owner on|off                take or release the ownership lock\n"
    "  length                      print the image length\n"
    "  truncate LEN                resize the image\n"
    "  sleep MS                    wait\n"
    "  echo TEXT                   print TEXT (for scripts that wait for a point)\n"
    "  check [-r]                  check the metadata like qemu-img check (-r: repair leaks);\n"
    "                              fails on corruption, or on leaks left unrepaired\n"
    "--create FMT:SIZE[:CLUSTER[:VERSION]] creates SPEC (a new file) first.\n"
    "SPEC: a path, fd:NAME (with --fd NAME=N) or faults:RULES:SPEC.\n"
    "Numbers take k, M, G suffixes (powers of 1024) or 0x.\n";

static int parse_num(const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 0);
    if (errno || end == text || text[0] == '-')
        return -EINVAL;
    unsigned shift = 0;
    if (*end) {
        const char *units = "kMGT";
        const char *u = strchr(units, *end == 'K' ? 'k' : *end);
        if (!u || end[1])
            return -EINVAL;
        shift = 10 * (unsigned)(u - units + 1);
    }
    if (shift && v > (ULLONG_MAX >> shift))
        return -ERANGE;
    *out = (uint64_t)v << shift;
    return 0;
}

static void *alloc_buffer(uint64_t len)
{
    void *p = NULL;
    if (len > SIZE_MAX || posix_memalign(&p, 4096, len ? (size_t)len : 1) != 0)
        return NULL;
    return p;
}

struct tool {
    struct bdrv_node *bs;
    struct nv_error err;
};

/* Parse "[-P BYTE] OFF LEN" */
static int parse_rw_args(int argc, char **argv, int *pattern, uint64_t *off, uint64_t *len)
{
    int i = 1;
    *pattern = -1;
    if (i < argc && strcmp(argv[i], "-P") == 0) {
        uint64_t p;
        if (i + 1 >= argc || parse_num(argv[i + 1], &p) < 0 || p > 255)
            return -EINVAL;
        *pattern = (int)p;
        i += 2;
    }
    if (argc - i != 2 || parse_num(argv[i], off) < 0 || parse_num(argv[i + 1], len) < 0)
        return -EINVAL;
    return 0;
}

static int cmd_write_zeroes(struct tool *t, int argc, char **argv)
{
    uint64_t off, len;
    if (argc != 4 || parse_num(argv[2], &off) < 0 || parse_num(argv[3], &len) < 0)
        return nv_error_set(&t->err, -EINVAL, "usage: write -z OFF LEN");
    int r = bdrv_pwrite_zeroes(t->bs, off, len, &t->err);
    if (r == 0)
        printf("wrote %llu/%llu bytes at offset %llu\n", (unsigned long long)len,
               (unsigned long long)len, (unsigned long long)off);
    return r;
}

static int cmd_check(struct tool *t, int argc, char **argv)
{
    bool repair = argc == 2 && strcmp(argv[1], "-r") == 0;
    if (argc > 2 || (argc == 2 && !repair))
        return nv_error_set(&t->err, -EINVAL, "usage: check [-r]");
    struct bdrv_check_result res;
    int r = bdrv_check(t->bs, &res, repair, &t->err);
    if (r < 0)
        return r;
    printf("%llu corruptions, %llu leaks, %llu leaks fixed, image end %llu\n",
           (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
           (unsigned long long)res.leaks_fixed, (unsigned long long)res.image_end);
    if (res.corruptions || res.leaks > res.leaks_fixed)
        return nv_error_set(&t->err, -EUCLEAN, "%s", res.first_problem);
    return 0;
}

static int cmd_write(struct tool *t, int argc, char **argv)
{
    int pattern;
    uint64_t off, len;
    if (argc > 1 && strcmp(argv[1], "-z") == 0)
        return cmd_write_zeroes(t, argc, argv);
    if (parse_rw_args(argc, argv, &pattern, &off, &len) < 0)
        return nv_error_set(&t->err, -EINVAL, "usage: write [-P BYTE] OFF LEN");
    uint8_t *buf = alloc_buffer(len);
    if (!buf)
        return nv_error_set(&t->err, -ENOMEM, "cannot allocate %llu bytes",
                            (unsigned long long)len);
    memset(buf, pattern < 0 ? 0xcd : pattern, (size_t)len);
    int r = bdrv_pwrite(t->bs, off, buf, (size_t)len, &t->err);
    free(buf);
    if (r == 0)
        printf("wrote %llu/%llu bytes at offset %llu\n", (unsigned long long)len,
               (unsigned long long)len, (unsigned long long)off);
    return r;
}

static int cmd_read(struct tool *t, int argc, char **argv)
{
    int pattern;
    uint64_t off, len;
    if (parse_rw_args(argc, argv, &pattern, &off, &len) < 0)
        return nv_error_set(&t->err, -EINVAL, "usage: read [-P BYTE] OFF LEN");
    uint8_t *buf = alloc_buffer(len);
    if (!buf)
        return nv_error_set(&t->err, -ENOMEM, "cannot allocate %llu bytes",
                            (unsigned long long)len);
    int r = bdrv_pread(t->bs, off, buf, (size_t)len, &t->err);
    for (uint64_t i = 0; r == 0 && pattern >= 0 && i < len; i++)
        if (buf[i] != pattern)
            r = nv_error_set(&t->err, -EILSEQ,
                             "pattern verification failed at offset %llu: "
                             "0x%02x, expected 0x%02x",
                             (unsigned long long)(off + i), buf[i], pattern);
    free(buf);
    if (r == 0)
        printf("read %llu/%llu bytes at offset %llu\n", (unsigned long long)len,
               (unsigned long long)len, (unsigned long long)off);
    return r;
}

static int cmd_lock(struct tool *t, int argc, char **argv)
{
    long timeout = 0;
    if (argc < 2 || argc > 3 ||
        (strcmp(argv[1], "shared") != 0 && strcmp(argv[1], "exclusive") != 0))
        return nv_error_set(&t->err, -EINVAL, "usage: lock shared|exclusive [TIMEOUT_MS]");
    if (argc == 3) {
        char *end;
        timeout = strtol(argv[2], &end, 10);
        if (*end || timeout < -1 || timeout > INT_MAX)
            return nv_error_set(&t->err, -EINVAL, "bad timeout '%s'", argv[2]);
    }
    enum bdrv_lock_mode mode = argv[1][0] == 's' ? BDRV_LOCK_SHARED : BDRV_LOCK_EXCLUSIVE;
    int r = bdrv_lock(t->bs, mode, (int)timeout, &t->err);
    if (r == 0)
        printf("locked %s (depth %u)\n", argv[1], bdrv_lock_depth(t->bs));
    return r;
}

static int cmd_reopen(struct tool *t, int argc, char **argv)
{
    unsigned flags = bdrv_get_flags(t->bs);
    if (argc == 2 && strcmp(argv[1], "-r") == 0) {
        flags &= ~(unsigned)(BDRV_O_RDWR | BDRV_O_OWNER);
    } else if (argc == 2 && strcmp(argv[1], "-w") == 0) {
        flags |= BDRV_O_RDWR | BDRV_O_OWNER;
    } else if (argc == 3 && strcmp(argv[1], "--cache") == 0) {
        unsigned cache;
        int r = bdrv_parse_cache_mode(argv[2], &cache, &t->err);
        if (r < 0)
            return r;
        flags = (flags & ~(unsigned)BDRV_O_CACHE_MASK) | cache;
    } else {
        return nv_error_set(&t->err, -EINVAL, "usage: reopen -r|-w|--cache MODE");
    }
    return bdrv_reopen(t->bs, flags, &t->err);
}

static int cmd_simple(struct tool *t, int argc, char **argv)
{
    const char *c = argv[0];
    uint64_t n;
    if (strcmp(c, "flush") == 0 && argc == 1)
        return bdrv_flush(t->bs, &t->err);
    if (strcmp(c, "unlock") == 0 && argc == 1)
        return bdrv_unlock(t->bs, &t->err);
    if (strcmp(c, "length") == 0 && argc == 1) {
        int64_t len = bdrv_getlength(t->bs, &t->err);
        if (len >= 0)
            printf("%lld\n", (long long)len);
        return len < 0 ? (int)len : 0;
    }
    if (strcmp(c, "truncate") == 0 && argc == 2 && parse_num(argv[1], &n) == 0)
        return bdrv_truncate(t->bs, n, &t->err);
    if (strcmp(c, "sleep") == 0 && argc == 2 && parse_num(argv[1], &n) == 0) {
        struct timespec ts = {.tv_sec = (time_t)(n / 1000), .tv_nsec = (long)(n % 1000) * 1000000};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
        return 0;
    }
    if (strcmp(c, "owner") == 0 && argc == 2 &&
        (strcmp(argv[1], "on") == 0 || strcmp(argv[1], "off") == 0))
        return bdrv_reopen(t->bs,
                           strcmp(argv[1], "on") == 0
                               ? bdrv_get_flags(t->bs) | BDRV_O_OWNER
                               : bdrv_get_flags(t->bs) & ~(unsigned)BDRV_O_OWNER,
                           &t->err);
    if (strcmp(c, "echo") == 0) {
        for (int i = 1; i < argc; i++)
            printf("%s%s", i > 1 ? " " : "", argv[i]);
        printf("\n");
        return 0;
    }
    return nv_error_set(&t->err, -EINVAL, "unknown command or bad arguments: '%s'", c);
}

static int run_command(struct tool *t, char *line)
{
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    for (char *tok = strtok(line, " \t"); tok; tok = strtok(NULL, " \t")) {
        if (argc == MAX_ARGS)
            return nv_error_set(&t->err, -E2BIG, "too many arguments");
        argv[argc++] = tok;
    }
    argv[argc] = NULL;
    if (argc == 0)
        return nv_error_set(&t->err, -EINVAL, "empty command");
    int r;
    if (strcmp(argv[0], "write") == 0)
        r = cmd_write(t, argc, argv);
    else if (strcmp(argv[0], "read") == 0)
        r = cmd_read(t, argc, argv);
    else if (strcmp(argv[0], "lock") == 0)
        r = cmd_lock(t, argc, argv);
    else if (strcmp(argv[0], "reopen") == 0)
        r = cmd_reopen(t, argc, argv);
    else if (strcmp(argv[0], "check") == 0)
        r = cmd_check(t, argc, argv);
    else
        r = cmd_simple(t, argc, argv);
    fflush(stdout);
    return r;
}

/* --create FMT:SIZE[:CLUSTER[:VERSION]] */
static int create_image(const char *arg, const char *path, struct nv_error *err)
{
    char fmt[16] = "", size[32] = "", cluster[32] = "", version[8] = "";
    struct bdrv_create_opts opts = {0};
    uint64_t v;
    if (sscanf(arg, "%15[^:]:%31[^:]:%31[^:]:%7s", fmt, size, cluster, version) < 2 ||
        parse_num(size, &opts.size) < 0)
        return nv_error_set(err, -EINVAL, "--create wants FMT:SIZE[:CLUSTER[:VERSION]]");
    if (cluster[0] && (parse_num(cluster, &v) < 0 || v > UINT32_MAX))
        return nv_error_set(err, -EINVAL, "bad cluster size '%s'", cluster);
    opts.cluster_size = cluster[0] ? (uint32_t)v : 0;
    opts.version = version[0] ? atoi(version) : 0;
    opts.mode = 0644;
    return bdrv_create(fmt, path, &opts, err);
}

/* --fd NAME=N: adopt inherited descriptor N under NAME for fd:NAME specs. */
static int adopt_fd(struct fdstash *stash, const char *arg, struct nv_error *err)
{
    const char *eq = strchr(arg, '=');
    char name[FDSTASH_NAME_MAX + 1];
    if (!eq || (size_t)(eq - arg) > FDSTASH_NAME_MAX)
        return nv_error_set(err, -EINVAL, "--fd wants NAME=N, not '%s'", arg);
    memcpy(name, arg, (size_t)(eq - arg));
    name[eq - arg] = '\0';
    int fd;
    int r = fdstash_parse_fd(eq + 1, &fd, err);
    if (r == 0)
        r = fdstash_check_fd(fd, FDSTASH_FILE, err);
    if (r < 0)
        return r;
    return fdstash_give(stash, name, fd, err);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"cache", required_argument, NULL, 'C'},
                                             {"fd", required_argument, NULL, 'F'},
                                             {"create", required_argument, NULL, 'N'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *format = NULL, *create = NULL;
    unsigned flags = BDRV_O_RDWR | BDRV_O_OWNER, cache = 0;
    char *commands[MAX_COMMANDS];
    int ncommands = 0, opt;
    struct tool t = {0};
    struct fdstash stash;
    fdstash_init(&stash);
    while ((opt = getopt_long(argc, argv, "f:rc:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'f':
            format = optarg;
            break;
        case 'r':
            flags = 0;
            break;
        case 'c':
            if (ncommands == MAX_COMMANDS) {
                fprintf(stderr, "nvtpm-io: too many commands\n");
                return 1;
            }
            commands[ncommands++] = optarg;
            break;
        case 'C':
            if (bdrv_parse_cache_mode(optarg, &cache, &t.err) < 0) {
                fprintf(stderr, "nvtpm-io: %s\n", t.err.msg);
                return 1;
            }
            break;
        case 'F':
            if (adopt_fd(&stash, optarg, &t.err) < 0) {
                fprintf(stderr, "nvtpm-io: %s\n", t.err.msg);
                return 1;
            }
            break;
        case 'N':
            create = optarg;
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        default:
            fputs(usage, stderr);
            return 1;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "nvtpm-io: need exactly one image SPEC\n%s", usage);
        return 1;
    }
    if (create && create_image(create, argv[optind], &t.err) < 0) {
        fprintf(stderr, "nvtpm-io: %s\n", t.err.msg);
        fdstash_cleanup(&stash);
        return 1;
    }
    t.bs = bdrv_open_format(format, argv[optind], flags | cache, &stash, &t.err);
    if (!t.bs) {
        fprintf(stderr, "nvtpm-io: %s\n", t.err.msg);
        fdstash_cleanup(&stash);
        return 1;
    }
    int status = 0;
    for (int i = 0; i < ncommands; i++) {
        char line[1024];
        snprintf(line, sizeof(line), "%s", commands[i]);
        if (run_command(&t, line) < 0) {
            fprintf(stderr, "nvtpm-io: %s: %s\n", commands[i], t.err.msg);
            status = 1;
            break;
        }
    }
    /* A last flush, so that what closing would write is checked too. */
    if (status == 0 && (bdrv_get_flags(t.bs) & BDRV_O_OWNER) && bdrv_flush(t.bs, &t.err) < 0) {
        fprintf(stderr, "nvtpm-io: flush at exit: %s\n", t.err.msg);
        status = 1;
    }
    bdrv_close(t.bs);
    fdstash_cleanup(&stash);
    return status;
}
